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


def crash_output_variance(
    model: torch.nn.Sequential, x: torch.Tensor, layer: int, p: float, reps: int, seed: int
) -> tuple[float, torch.Tensor]:
    """The paper's metric, written here independently of the library's Monte-Carlo code.

    Every unit of hidden ``layer`` is zeroed independently with probability p, without
    rescaling, with ``reps`` masks per input. Returns the variance of the network output over
    the masks (unbiased, summed over the outputs, averaged over the inputs) and the crashed
    predictions ``(reps, B)`` (argmax of the crashed outputs).
    """
    seq = bn.strip_crash_dropout(model).eval()
    cut = 2 * layer + 2  # Linear + activation per hidden layer: cut after hidden layer `layer`
    head, tail = seq[:cut], seq[cut:]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        h = head(x)  # (B, N) fault-free outputs of the crashed layer
        keep = (torch.rand(reps, *h.shape, generator=g) >= p).to(h.dtype)
        out = tail(keep * h)  # (reps, B, C)
    return float(out.var(0, correction=1).sum(-1).mean()), out.argmax(-1)


@pytest.mark.slow
@pytest.mark.parametrize("layer", [0, 1])
def test_crash_aware_training_lowers_output_error_variance(digits: tuple, layer: int) -> None:
    """arXiv 1902.01686's claim on its own metric: trained with crash-dropout (p_train = 0.3)
    in one hidden layer and the MSE loss on one-hot targets, the variance of the network
    output under random crashes of that layer (p = 0.1, no rescaling) is far lower than after
    plain training. Digits, 64-50-30-10 sigmoid, 30 epochs; measured ratio 0.24-0.32 over
    seeds 0-4 (docs/neurons.md), asserted < 0.6 on each of three seeds."""
    Xtr, ytr, Xte, yte = digits
    kw = {"hidden": (50, 30), "epochs": 30, "loss": "mse", "crash_layer": layer}
    for seed in range(3):
        plain = bn.train_mlp(Xtr, ytr, seed=seed, **kw)
        aware = bn.train_mlp(Xtr, ytr, seed=seed, p_train=0.3, **kw)
        assert sum(isinstance(m, bn.CrashDropout) for m in aware) == 1
        v_plain, pred_plain = crash_output_variance(plain, Xte, layer, 0.1, 300, seed)
        v_aware, pred_aware = crash_output_variance(aware, Xte, layer, 0.1, 300, seed)
        acc = {
            name: float((m(Xte).argmax(-1) == yte).float().mean())
            for name, m in (("plain", plain), ("aware", aware))
        }
        crash_acc_plain = float((pred_plain == yte).float().mean())
        crash_acc_aware = float((pred_aware == yte).float().mean())
        print(f"layer {layer} seed {seed}: Var {v_plain:.4f} -> {v_aware:.4f} "
              f"(ratio {v_aware / v_plain:.3f}); accuracy {acc}; under crashes "
              f"{crash_acc_plain:.4f} -> {crash_acc_aware:.4f}")  # fmt: skip
        assert v_aware < 0.6 * v_plain
        assert acc["aware"] > acc["plain"] - 0.03
        assert crash_acc_aware > crash_acc_plain - 0.02
        # the library's measurement (crash_report) agrees with the one written here
        rep = bn.crash_report(aware, Xte, yte, p=0.1, layer=layer, reps=300, seed=seed)
        assert rep["mc_var"] == pytest.approx(v_aware, rel=0.1)


def test_crash_layer_placement_and_stripping() -> None:
    model = bn.make_mlp([4, 6, 5, 3], "tanh", p_train=0.3, crash_layer=1)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "Tanh", "Linear", "Tanh", "CrashDropout", "Linear"]
    both = bn.make_mlp([4, 6, 5, 3], "tanh", p_train=0.3, crash_layer=[0, 1])
    assert sum(isinstance(m, bn.CrashDropout) for m in both) == 2
    assert sum(isinstance(m, bn.CrashDropout) for m in bn.make_mlp([4, 6, 3], p_train=0.3)) == 1
    for bad in (2, -1, [], [0, 5], True, 0.5):
        with pytest.raises(ValueError, match="crash_layer"):
            bn.make_mlp([4, 6, 5, 3], p_train=0.3, crash_layer=bad)  # type: ignore[arg-type]
    stripped = bn.strip_crash_dropout(model.eval())
    assert not any(isinstance(m, bn.CrashDropout) for m in stripped)
    assert set(stripped.state_dict()) == set(bn.make_mlp([4, 6, 5, 3], "tanh").state_dict())
    x = torch.rand(8, 4)
    with torch.no_grad():
        torch.testing.assert_close(stripped(x), model(x))
    assert stripped[0].weight is model[0].weight  # parameters shared


def test_mse_loss_regresses_one_hot_targets() -> None:
    """loss="mse" fits the linear outputs to one-hot targets (the paper's loss): the outputs
    stay near 0/1, whereas cross-entropy logits grow well beyond 1."""
    Xtr, ytr, Xte, yte = bn.synthetic_data(seed=0)
    kw = {"hidden": (16,), "epochs": 40, "seed": 0}
    mse_model = bn.train_mlp(Xtr, ytr, loss="mse", **kw)
    ce_model = bn.train_mlp(Xtr, ytr, **kw)
    with torch.no_grad():
        mse, ce = mse_model(Xte), ce_model(Xte)
    target = torch.nn.functional.one_hot(yte, 4).float()
    assert float(((mse - target) ** 2).mean()) < 0.05
    assert float(((ce - target) ** 2).mean()) > 1.0
    with pytest.raises(ValueError, match="unknown loss"):
        bn.train_mlp(Xtr, ytr, loss="hinge")


@pytest.mark.slow
def test_crash_dropout_reduces_probability_variance(digits: tuple) -> None:
    """A different, weaker fact of the default setup (cross-entropy, crash-dropout in every
    hidden layer, one hidden layer): the softmax probabilities' variance under crashes
    (p = 0.05) drops (about 25% on digits), the logits' variance does not (docs/neurons.md)."""
    Xtr, ytr, Xte, yte = digits
    kw = {"hidden": (32,), "epochs": 20, "seed": 0}
    plain = bn.crash_report(bn.train_mlp(Xtr, ytr, **kw), Xte, yte, p=0.05, reps=100)
    drop = bn.crash_report(bn.train_mlp(Xtr, ytr, p_train=0.2, **kw), Xte, yte, p=0.05, reps=100)
    print("plain", plain, "\ndropout 0.2", drop)
    assert drop["prob_var"] < 0.9 * plain["prob_var"]
    assert drop["accuracy"] > plain["accuracy"] - 0.03
