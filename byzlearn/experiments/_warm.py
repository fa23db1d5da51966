"""Compiling the kernels of several configs in a second process while this one checks them.

Checking a config runs its rule and attack once on tiny inputs (``config._try_options``), so on
a fresh install (numba's caches empty) checking the demo's six configs compiles every kernel
they use, one config after the other on one core: about 35 s of the demo's first run on a
2-core Xeon, against 6 s for the rest. :func:`compiling_ahead` starts a helper process that
checks the same configs from the other end of the list (the rules without a Gram pass first:
the first rules that this process checks usually need it) and so compiles their kernels into
the same disk caches on the second core; when this process reaches a config, its kernels are
often cached already (numba loads a cached kernel in well under a second). Nothing else is
shared: the helper writes only numba's caches (saves serialised across processes:
:func:`byzlearn._jit_cache.serialise_saves`), prints nothing, and is stopped when the checks
end (it dies with this process too). Its failures change nothing: the checks here compile
whatever is not cached, as without it.

The helper starts only where it can help: two CPUs or more for this process, two configs or
more that compile different kernels, numba present, and ``BYZLEARN_BACKGROUND_COMPILE`` not set
to ``0``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from byzlearn._lifetime import end_with

__all__ = ["SWITCH", "check_in_turn", "compiling_ahead", "helper_order"]

# The environment variable that turns the helper off ("0").
SWITCH = "BYZLEARN_BACKGROUND_COMPILE"
# The sections of a config that decide what its check compiles (the rule and the attack, on
# the rule's n and f): configs equal on these compile the same kernels.
_COMPILED_BY = ("rule", "attack", "n", "f", "byzantine", "protocol")
# Seconds the helper gets to end after SIGTERM before it is killed.
_STOP_SECONDS = 5.0


def helper_order(configs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The configs the helper checks, in its order: one per set of kernels (see
    ``_COMPILED_BY``), without the first one's (this process compiles it at once), those
    whose rule needs no Gram pass first in the given order, then the others from the end."""
    distinct: dict[str, Mapping[str, Any]] = {}
    for config in configs:
        key = _kernels_key(config)
        if key is not None:
            distinct.setdefault(key, config)
    ahead = list(distinct.values())[1:]
    coordinate_wise = [c for c in ahead if not _needs_gram(c)]
    return coordinate_wise + [c for c in reversed(ahead) if _needs_gram(c)]


def _kernels_key(config: Mapping[str, Any]) -> str | None:
    try:
        return json.dumps({k: config.get(k) for k in _COMPILED_BY}, sort_keys=True)
    except (TypeError, ValueError):
        return None  # (a value JSON cannot carry: such a config is not sent to the helper)


def _needs_gram(config: Mapping[str, Any]) -> bool:
    """Whether the config's rule (with its pre-aggregators) computes a Gram pass; True when
    that cannot be told (an unknown or missing rule: the checks will say what is wrong)."""
    import byzlearn.aggregators as agg

    rule = config.get("rule")
    if not isinstance(rule, Mapping) or not isinstance(rule.get("name"), str):
        return True
    pre = rule.get("pre") or []
    names = [*pre, *str(rule["name"]).split("+")] if isinstance(pre, list) else []
    try:
        return any(agg.spec(str(name)).needs_gram for name in names) if names else True
    except (KeyError, ValueError, TypeError):
        return True


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not on Linux)
        return os.cpu_count() or 1


def _wanted(work: Sequence[Mapping[str, Any]]) -> bool:
    if os.environ.get(SWITCH, "1").strip() == "0" or not work or _usable_cpus() < 2:
        return False
    try:
        import numba  # noqa: F401  (nothing to compile without it)
    except ImportError:
        return False
    return True


def _start(configs: Sequence[Mapping[str, Any]]) -> subprocess.Popen | None:
    work = helper_order(configs)
    if not _wanted(work):
        return None
    try:
        payload = json.dumps(work).encode()
    except (TypeError, ValueError):  # (a value JSON cannot carry: the checks will tell)
        return None
    env = {**os.environ, SWITCH: "0", "OMP_NUM_THREADS": "1"}
    try:
        helper = subprocess.Popen(
            [sys.executable, "-m", "byzlearn.experiments._warm", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    except OSError:
        return None
    try:
        assert helper.stdin is not None
        helper.stdin.write(payload)
        helper.stdin.close()
    except OSError:  # it died at once: nothing to wait for
        pass
    return helper


def _stop(helper: subprocess.Popen) -> None:
    if helper.poll() is None:
        helper.terminate()
        try:
            helper.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait()


@contextlib.contextmanager
def compiling_ahead(configs: Sequence[Mapping[str, Any]]) -> Iterator[None]:
    """Within the block, a helper process checks ``configs`` (raw config dicts, as given to
    :func:`~byzlearn.experiments.config.parse_config`) in :func:`helper_order`, compiling their
    kernels into the disk caches; stopped when the block ends. Starts nothing where it cannot
    help (see the module docstring)."""
    helper = _start(configs)
    try:
        yield
    finally:
        if helper is not None:
            _stop(helper)


def main(argv: Sequence[str] | None = None) -> int:
    """The helper: ``python -m byzlearn.experiments._warm PARENT_PID`` with a JSON list of
    config dicts on its input; checks each (errors ignored) while its parent lives."""
    args = list(sys.argv[1:] if argv is None else argv)
    parent = int(args[0])
    end_with(parent)  # (killed on its own, the command leaves no helper behind)
    check_in_turn(json.loads(sys.stdin.buffer.read() or b"[]"), parent)
    return 0


def check_in_turn(configs: Sequence[Mapping[str, Any]], parent: int) -> int:
    """Check ``configs`` one after the other (on one thread) while ``parent`` is this
    process's parent; errors are ignored (the parent's own checks report them). Returns how
    many were checked."""
    import torch

    from byzlearn.experiments.config import parse_config

    torch.set_num_threads(1)
    done = 0
    for config in configs:
        if os.getppid() != parent:
            break
        with contextlib.suppress(Exception):
            parse_config(dict(config))
        done += 1
    return done


if __name__ == "__main__":
    sys.exit(main())
