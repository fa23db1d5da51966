"""Fault-tolerance-aware training: the measured error variance under crashes drops."""

from __future__ import annotations

import pytest
import torch

import byzlearn.neurons as bn


def test_make_mlp_and_crash_dropout() -> None:
    model = bn.make_mlp([4, 6, 5, 3], "tanh", p_train=0.3)
    assert sum(isinstance(m, bn.CrashDropout) for m in model) == 2
    x = torch.rand(64, 6)[:, :4]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))  # identity in eval
    drop = bn.CrashDropout(0.5).train()
    out = drop(torch.ones(10000))
    assert set(out.unique().tolist()) <= {0.0, 1.0}  # no rescaling
    assert 0.45 < float(out.mean()) < 0.55
    net = bn.extract_network(model)  # CrashDropout is skipped by the analysis
    assert net.hidden_sizes == [6, 5]
    assert isinstance(bn.make_mlp([2, 3, 1], "scaled_sigmoid", K=0.5)[1], bn.ScaledSigmoid)
    with pytest.raises(ValueError, match="unknown activation"):
        bn.make_mlp([2, 3, 1], "gelu")
    with pytest.raises(ValueError, match="sizes"):
        bn.make_mlp([2, 1])
    with pytest.raises(ValueError, match="CrashDropout"):
        bn.CrashDropout(1.0)


def test_data_loaders() -> None:
    Xtr, _, Xte, _ = bn.load_digits_data(seed=0)
    assert Xtr.shape[1] == 64 and Xtr.shape[0] + Xte.shape[0] == 1797
    assert float(Xtr.min()) >= 0.0 and float(Xtr.max()) <= 1.0
    Xs, ys, _, _ = bn.synthetic_data(n=100, d=5, classes=3, seed=1)
    assert Xs.shape == (75, 5) and int(ys.max()) <= 2
    with pytest.raises(ValueError, match="test_fraction"):
        bn.synthetic_data(test_fraction=1.0)


@pytest.mark.slow
def test_variance_regulariser_reduces_crash_variance(digits: tuple) -> None:
    """λ·b3-variance regulariser (arXiv 1902.01686, VarDelta): measured Var Δ under crashes
    (p = 0.05, first hidden layer) drops, at a small accuracy cost."""
    Xtr, ytr, Xte, yte = digits
    kw = {"hidden": (32,), "epochs": 20, "seed": 0}
    plain = bn.crash_report(bn.train_mlp(Xtr, ytr, **kw), Xte, yte, p=0.05, reps=100)
    reg = bn.crash_report(bn.train_mlp(Xtr, ytr, var_reg=1.0, **kw), Xte, yte, p=0.05, reps=100)
    print("plain", plain, "\nvar_reg=1", reg)
    assert reg["mc_var"] < 0.5 * plain["mc_var"]
    assert reg["b3_var"] < 0.5 * plain["b3_var"]
    assert reg["accuracy"] > plain["accuracy"] - 0.03
    assert reg["crash_accuracy"] >= plain["crash_accuracy"] - 0.01


def test_train_bad_arguments() -> None:
    X, y, _, _ = bn.synthetic_data(n=40, d=3, seed=0)
    with pytest.raises(ValueError, match="var_reg"):
        bn.train_mlp(X, y, var_reg=-1.0)
    with pytest.raises(ValueError, match="epochs"):
        bn.train_mlp(X, y, epochs=0)
    with pytest.raises(ValueError, match="hidden layer index"):
        bn.train_mlp(X, y, hidden=(4,), var_reg=1.0, reg_layer=1)


@pytest.mark.slow
def test_crash_dropout_reduces_probability_variance(digits: tuple) -> None:
    """Crash-dropout (p_train = 0.2, no rescaling): the variance of the softmax probabilities
    under crashes (p = 0.05) drops (about 25% on digits); the logits' variance does not."""
    Xtr, ytr, Xte, yte = digits
    kw = {"hidden": (32,), "epochs": 20, "seed": 0}
    plain = bn.crash_report(bn.train_mlp(Xtr, ytr, **kw), Xte, yte, p=0.05, reps=100)
    drop = bn.crash_report(bn.train_mlp(Xtr, ytr, p_train=0.2, **kw), Xte, yte, p=0.05, reps=100)
    print("plain", plain, "\ndropout 0.2", drop)
    assert drop["prob_var"] < 0.9 * plain["prob_var"]
    assert drop["accuracy"] > plain["accuracy"] - 0.03
