"""The demo's warm-up leaves nothing to compile or load for the timed run (its seconds column
leaves the one-off costs out)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

_FIRST_ROUND = textwrap.dedent(
    """
    import gc, json, sys
    from numba.core.registry import CPUDispatcher
    from byzlearn.experiments.demo import _warm_up, demo_config
    from byzlearn.experiments.trainer import Trainer

    def overloads():
        return {
            id(d): (d.py_func.__qualname__, len(d.overloads))
            for d in gc.get_objects() if isinstance(d, CPUDispatcher)
        }

    _warm_up(demo_config("average", steps=2), first=True)
    config = demo_config(sys.argv[1], steps=2)
    _warm_up(config, first=False)
    before = overloads()
    Trainer(config).step()
    after = overloads()
    print(json.dumps(sorted(
        name for key, (name, count) in after.items() if count > before.get(key, ("", 0))[1]
    )))
    """
)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("rule", ["krum", "nnm+krum"])
def test_the_first_round_of_a_warmed_up_demo_run_adds_no_kernel(rule):
    # (before: the first rounds' attacked gradients made Krum refine its Gram pass on a central
    # row, whose two small kernels the warm-up's Gaussian input never reached: 0.2 s of the
    # timed run on a cold cache)
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_ROUND, rule],
        capture_output=True,
        text=True,
        check=True,
        timeout=280,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
