"""The helper process that compiles the kernels of later configs while the first are checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from byzlearn.experiments import _warm
from byzlearn.experiments.demo import DEMO_RULES, _demo_data
from byzlearn.experiments.sweep import plan_sweep


def _rule(config) -> str:
    rule = config["rule"]
    return "+".join([*rule.get("pre", []), rule["name"]])


def _demo(rules=DEMO_RULES) -> list[dict]:
    return [_demo_data(rule, steps=10, seed=0) for rule in rules]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie no one reaped yet has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# ---------------------------------------------------------------- what the helper checks
def test_the_helper_takes_the_coordinate_wise_rules_first_then_the_others_from_the_end():
    order = [_rule(c) for c in _warm.helper_order(_demo())]
    # average is checked here first (nothing to compile ahead); krum next, here: the helper
    # starts on what this process reaches last or needs no Gram pass
    assert order == ["median", "trimmed_mean", "nnm+krum", "bulyan", "krum"]


def test_configs_that_compile_the_same_kernels_are_checked_once():
    same = [{**_demo_data("krum", steps=10, seed=0), "optimizer": {"lr": lr}} for lr in (1, 2)]
    other = _demo_data("median", steps=10, seed=0)
    assert _warm.helper_order(same) == []  # one set of kernels: this process's first
    assert _warm.helper_order([*same, other]) == [other]
    pre = {**_demo_data("krum", steps=10, seed=0), "rule": {"name": "krum", "pre": ["nnm"]}}
    assert _warm.helper_order([other, pre]) == [pre]  # (pre-aggregators are part of the rule)


def test_an_unknown_rule_or_a_value_json_cannot_carry_does_not_stop_the_order():
    unknown = {**_demo_data("median", steps=10, seed=0), "rule": {"name": "no_such_rule"}}
    odd = {**_demo_data("trimmed_mean", steps=10, seed=0), "n": object()}
    first = _demo_data("average", steps=10, seed=0)
    assert _warm.helper_order([first, odd, unknown]) == [unknown]  # (last: as if it had a Gram)


# ---------------------------------------------------------------- when it starts and ends
class _Recorder:
    """``subprocess.Popen`` that records the helpers it starts."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []
        self.popen = subprocess.Popen  # (the module's own: the fixture replaces it)

    def __call__(self, *args, **kwargs):
        helper = self.popen(*args, **kwargs)
        self.started.append(helper)
        return helper


@pytest.fixture
def recorder(monkeypatch):
    monkeypatch.delenv(_warm.SWITCH, raising=False)
    monkeypatch.setattr(_warm, "_usable_cpus", lambda: 2)
    recording = _Recorder()
    monkeypatch.setattr(_warm.subprocess, "Popen", recording)
    return recording


def test_a_helper_checks_the_later_configs_and_is_stopped_when_the_block_ends(recorder):
    with _warm.compiling_ahead(_demo()):
        assert len(recorder.started) == 1
        helper = recorder.started[0]
        assert helper.args[1:3] == ["-m", "byzlearn.experiments._warm"]
        assert helper.args[3] == str(os.getpid())
    assert helper.poll() is not None  # stopped (or done): never left behind


@pytest.mark.parametrize(
    "case",
    ["one set of kernels", "switched off", "one cpu", "no process can start", "not json data"],
)
def test_no_helper_where_it_cannot_help(recorder, monkeypatch, case):
    configs = _demo()
    if case == "one set of kernels":
        configs = _demo(["krum", "krum"])
    elif case == "switched off":
        monkeypatch.setenv(_warm.SWITCH, "0")
    elif case == "one cpu":
        monkeypatch.setattr(_warm, "_usable_cpus", lambda: 1)
    elif case == "not json data":  # (outside the sections that tell the kernels apart)
        configs[-1] = {**configs[-1], "name": object()}
    else:

        def refused(*args, **kwargs):
            raise OSError(11, "Resource temporarily unavailable")

        monkeypatch.setattr(_warm.subprocess, "Popen", refused)
    with _warm.compiling_ahead(configs):
        pass
    assert recorder.started == []


def test_an_error_in_the_block_still_stops_the_helper(recorder):
    with pytest.raises(RuntimeError, match="checks failed"), _warm.compiling_ahead(_demo()):
        raise RuntimeError("checks failed")
    assert recorder.started and recorder.started[0].poll() is not None


def test_a_sweep_keeps_its_points_order_and_its_refusals(recorder):
    base = _demo_data("krum", steps=10, seed=0)
    grid = {"rule.name": ["krum", "median", "no_such_rule", "trimmed_mean"]}
    plan = plan_sweep(base, grid)
    assert [c.rule.name for c in plan.configs] == ["krum", "median", "trimmed_mean"]
    assert [p["rule.name"] for p, _ in plan.invalid] == ["no_such_rule"]
    assert len(recorder.started) == 1 and recorder.started[0].poll() is not None


def test_the_helper_checks_in_turn_and_ignores_bad_configs(monkeypatch):
    import byzlearn.experiments.config as config_module

    seen: list[str] = []

    def parse(data):
        seen.append(data["rule"]["name"])
        if data["rule"]["name"] == "bad":
            raise ValueError("a bad config")

    monkeypatch.setattr(config_module, "parse_config", parse)
    configs = [{"rule": {"name": name}} for name in ("median", "bad", "krum")]
    assert _warm.check_in_turn(configs, os.getppid()) == 3
    assert seen == ["median", "bad", "krum"]
    assert _warm.check_in_turn(configs, os.getppid() + 1) == 0  # its parent gone: it stops


# ---------------------------------------------------------------- as a process
def test_the_helper_ends_with_the_process_that_started_it(tmp_path):
    """A parent killed (SIGKILL, nothing runs after it) in the middle of its checks: the
    helper ends at once, not after the rule it compiles (on empty caches)."""
    script = textwrap.dedent(
        """
        import os, sys, time
        from byzlearn.experiments import _warm
        from byzlearn.experiments.demo import DEMO_RULES, _demo_data
        _warm._usable_cpus = lambda: 2
        with _warm.compiling_ahead([_demo_data(r, steps=10, seed=0) for r in DEMO_RULES]):
            print(os.getpid(), flush=True)
            time.sleep(60)
        """
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    env["BYZLEARN_CACHE"] = str(tmp_path / "kernels")
    env.pop(_warm.SWITCH, None)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        children = _children(pid)
        assert len(children) == 1
        time.sleep(4)  # the helper is compiling now (its first rule takes some 10 s, cold)
        assert _alive(children[0])
        os.kill(pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 3  # (not the end of the rule it compiles)
        while _alive(children[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(children[0])
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _children(pid: int) -> list[int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            text = ""
        if text.split():
            return [int(c) for c in text.split()]
        time.sleep(0.05)
    return []


_COMPILES = textwrap.dedent(
    """
    import json, sys
    from numba.core import event
    from byzlearn.experiments.config import parse_config
    with event.install_recorder("numba:compile") as recorder:
        parse_config(json.loads(sys.argv[1]))
    print(sum(1 for e in recorder.buffer if e[1].is_start))
    """
)


@pytest.mark.slow
def test_what_the_helper_compiled_a_later_process_loads(tmp_path):
    config = {**_demo_data("average", steps=10, seed=0), "f": 0, "attack": {"name": "none"}}
    config["byzantine"] = "first"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    env["BYZLEARN_CACHE"] = str(tmp_path / "kernels")
    subprocess.run(
        [sys.executable, "-m", "byzlearn.experiments._warm", str(os.getpid())],
        input=json.dumps([config]).encode(),
        env=env,
        check=True,
        timeout=300,
    )
    compiled = subprocess.run(
        [sys.executable, "-c", _COMPILES, json.dumps(config)],
        env=env,
        capture_output=True,
        check=True,
        timeout=300,
    )
    assert int(compiled.stdout) == 0
    cold = subprocess.run(  # (the same check on empty caches compiles: the test can fail)
        [sys.executable, "-c", _COMPILES, json.dumps(config)],
        env={**env, "NUMBA_CACHE_DIR": str(tmp_path / "empty")},
        capture_output=True,
        check=True,
        timeout=300,
    )
    assert int(cold.stdout) > 0
