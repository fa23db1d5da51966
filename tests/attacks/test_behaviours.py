"""Node behaviours: validation and the answers to "reply at step t? with what delay? which
vector for receiver r?"."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from byzlearn.attacks.behaviours import Crash, Delay, Equivocation, Omission, Reliable


def test_reliable_and_crash():
    assert all(Reliable().reply(t) == 0 for t in range(5))
    c = Crash(3)
    assert [c.reply(t) for t in range(6)] == [0, 0, 0, None, None, None]
    assert [c.replies(t, node=2) for t in range(5)] == [True, True, True, False, False]
    assert not Crash(0).replies(0)
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        Crash(-1)
    with pytest.raises(TypeError, match="step must be an int"):
        Crash(1.5)
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        c.reply(-1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.step = 4


def test_delay():
    assert [Delay(2).reply(t) for t in range(3)] == [2, 2, 2]
    assert Delay(0).reply(7) == 0 and Delay(2).replies(0)
    with pytest.raises(ValueError, match="steps"):
        Delay(-1)


def test_omission_rate_and_reproducibility():
    o = Omission(0.3, seed=5)
    answers = [o.reply(t, node=1) for t in range(4000)]
    assert set(answers) <= {0, None}
    rate = answers.count(None) / len(answers)
    assert abs(rate - 0.3) < 0.03
    # a pure function of (seed, node, step): same answers in any order, other nodes differ
    assert [o.reply(t, node=1) for t in reversed(range(4000))] == answers[::-1]
    assert [o.reply(t, node=2) for t in range(4000)] != answers
    # reference: the documented draw
    ref = [None if np.random.default_rng([5, 1, t]).random() < 0.3 else 0 for t in range(50)]
    assert answers[:50] == ref
    assert all(Omission(0.0).replies(t) for t in range(50))
    assert not any(Omission(1.0).replies(t) for t in range(50))
    with pytest.raises(ValueError, match="probability must be in \\[0, 1\\]"):
        Omission(1.5)
    with pytest.raises(TypeError, match="probability"):
        Omission("0.1")


def test_equivocation():
    V = torch.arange(6.0).reshape(3, 2)
    e = Equivocation()
    assert [e.choose(r, 3) for r in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    torch.testing.assert_close(e.vector_for(4, V), V[1])
    s = Equivocation("split")
    assert [s.choose(r, 2, num_receivers=5) for r in range(5)] == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="num_receivers"):
        s.choose(0, 2)
    with pytest.raises(ValueError, match="outside"):
        s.choose(5, 2, num_receivers=5)
    r = Equivocation("random", seed=3)
    picks = [r.choose(k, 4, step=2) for k in range(200)]
    assert set(picks) == {0, 1, 2, 3}
    assert picks == [int(np.random.default_rng([3, 2, k]).integers(4)) for k in range(200)]
    assert [r.choose(k, 4, step=3) for k in range(200)] != picks
    assert e.reply(0) == 0
    with pytest.raises(ValueError, match="mode must be one of"):
        Equivocation("other")
    with pytest.raises(ValueError, match="no candidate"):
        e.vector_for(0, [])
    assert e.vector_for(1, [np.zeros(2), np.ones(2)]).tolist() == [1.0, 1.0]
