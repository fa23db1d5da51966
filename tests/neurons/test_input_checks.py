"""Bad inputs get one clear ValueError/TypeError line (never a traceback or a silent answer)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import byzlearn.neurons as bn
from byzlearn.neurons.modelfile import ModelFileError, load_state_dict_file


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2)).eval()


@pytest.fixture
def net() -> bn.Network:
    return bn.extract_network(_model())


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(5, 3, generator=torch.Generator().manual_seed(1))


# --- the three real bugs ----------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_layer(bad: float) -> None:
    m = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 1))
    with torch.no_grad():
        m[2].weight[0, 0] = bad
    with pytest.raises(ValueError, match="layer '2' has non-finite weight"):
        bn.extract_network(m)


def test_double_convolution_is_probed_in_its_dtype() -> None:
    m = nn.Sequential(nn.Conv1d(1, 1, 2), nn.Sigmoid(), nn.Flatten(), nn.Linear(2, 1)).double()
    net = bn.extract_network(m, input_shape=(1, 3))
    assert net.hidden_sizes == [2]
    assert bn.fep_bound(net, [1]) > 0


def _save_state(tmp_path: Path, kind: str) -> Path:
    state: dict[object, torch.Tensor] = dict(_model().state_dict())
    if kind == "sparse":
        state["0.weight"] = state["0.weight"].to_sparse()
    elif kind == "meta":
        state["0.weight"] = torch.empty(4, 3, device="meta")
    else:
        state[5] = torch.zeros(2)
    path = tmp_path / f"{kind}.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [("sparse", "sparse_coo tensor"), ("meta", "meta tensor"), ("key", "is not a string")],
)
def test_odd_state_dict_entries_are_one_line_errors(
    tmp_path: Path, kind: str, message: str
) -> None:
    path = _save_state(tmp_path, kind)
    with pytest.raises(ModelFileError, match=message):
        load_state_dict_file(path)


def test_cli_sparse_state_dict_exits_2_with_one_line(tmp_path: Path) -> None:
    path = _save_state(tmp_path, "sparse")
    script = Path(sys.executable).with_name("byzlearn")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "byzlearn.cli"]
    args = [*base, "neurons", "analyze", str(path), "--hidden", "4"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "sparse_coo tensor" in proc.stderr


# --- FEP arguments ----------------------------------------------------------------------------
@pytest.mark.parametrize("eps_prime", [-2.0, float("nan"), 1.0, 3.0])
def test_max_failures_checks_epsilon_prime(net: bn.Network, eps_prime: float) -> None:
    with pytest.raises(ValueError, match="epsilon_prime"):
        bn.max_failures(net, 1.0, epsilon_prime=eps_prime)


@pytest.mark.parametrize(
    ("count", "error"),
    [(float("inf"), ValueError), (float("nan"), ValueError), (None, TypeError)],
)
def test_fault_counts_must_be_integers(net: bn.Network, count: object, error: type) -> None:
    with pytest.raises(error, match=r"neurons\[0\]"):
        bn.fep_bound(net, [count])  # type: ignore[list-item]


def test_paper_fep_refuses_negative_counts() -> None:
    with pytest.raises(ValueError, match=r"f\[0\]"):
        bn.paper_fep([3], [-1], 1, 1, 1)


def test_string_C_is_refused() -> None:
    with pytest.raises(TypeError, match="C must be a number"):
        bn.extract_network(_model(), C="0.5")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (torch.zeros(0, 3), ValueError, "non-empty"),
        (torch.zeros(4, 5), ValueError, "5 features"),
        (torch.zeros(3), ValueError, "non-empty batch"),
        (np.zeros((4, 3)), TypeError, "torch.Tensor"),
    ],
)
def test_bad_data_for_extract_network(data: object, error: type, message: str) -> None:
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(error, match=message):
        bn.extract_network(m, data=data)  # type: ignore[arg-type]


# --- fault injection --------------------------------------------------------------------------
def test_reduce_must_be_max_or_mean(net: bn.Network, x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="reduce"):
        bn.random_faults(net, x, [1], reps=2, reduce="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduce"):
        bn.evaluate_configs(net, x, [[("neuron", 0, 1, 0.0)]], reduce="x")  # type: ignore[arg-type]


def test_empty_batch_is_refused(net: bn.Network) -> None:
    empty = torch.zeros(0, 3)
    with pytest.raises(ValueError, match="0 rows"):
        bn.worst_case_search(net, empty, [1])
    with pytest.raises(ValueError, match="0 rows"):
        bn.random_faults(net, empty, [1], reps=2)
    with pytest.raises(ValueError, match="0 rows"):
        bn.certify(net, empty, 0.1, 0.1, 0.1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_refused(net: bn.Network, bad: float) -> None:
    """NaN in x made worst_case_search return a NaN error (found by a random search)."""
    x = torch.rand(4, 3)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        bn.worst_case_search(net, x, [1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        bn.random_faults(net, x, [1], reps=2)


@pytest.mark.parametrize("idx", [9, -1])
def test_out_of_range_neuron_indices(net: bn.Network, x: torch.Tensor, idx: int) -> None:
    with pytest.raises(ValueError, match="neuron index"):
        bn.evaluate_configs(net, x, [[("neuron", 0, idx, 0.0)]])
    faults = bn.module_faults(_model(), net, {0: [idx]})
    with pytest.raises(ValueError, match="neuron index"), faults:
        pass
    with pytest.raises(ValueError, match="synapse row"):
        bn.with_crashed_synapses(_model(), net, {0: [(idx, 0)]})


# --- probabilistic ----------------------------------------------------------------------------
def test_probability_accepts_numpy_and_0d_tensors_refuses_bools(
    net: bn.Network, x: torch.Tensor
) -> None:
    ref = bn.b3(net, x, 0.25).var
    assert torch.allclose(bn.b3(net, x, np.float32(0.25)).var, ref)  # type: ignore[arg-type]
    assert torch.allclose(bn.b3(net, x, torch.tensor(0.25)).var, ref)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bool"):
        bn.b3(net, x, True)


def test_probabilistic_counts_and_levels(net: bn.Network, x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="reps"):
        bn.compare_estimates(net, x, 0.1, reps=1)
    with pytest.raises(ValueError, match="reps"):
        bn.failure_frequency(net, x, 0.1, 0.1, reps=0)
    with pytest.raises(ValueError, match="q must be"):
        bn.median_repeats_needed(-0.1, 0.1)
    with pytest.raises(ValueError, match="epsilon"):
        bn.algorithm1_conditions(net, x, 0.1, 0.0)


# --- training ---------------------------------------------------------------------------------
def test_training_arguments() -> None:
    X = torch.rand(20, 3)
    y = torch.randint(0, 2, (20,))
    with pytest.raises(ValueError, match="p_train"):
        bn.train_mlp(X, y, hidden=(4,), epochs=1, p_train=-0.1)
    with pytest.raises(ValueError, match="var_reg"):
        bn.train_mlp(X, y, hidden=(4,), epochs=1, var_reg=float("nan"))
    with pytest.raises(ValueError, match="integer class labels"):
        bn.train_mlp(X, y.float(), hidden=(4,), epochs=1)
    with pytest.raises(ValueError, match="one label per row"):
        bn.train_mlp(X, y[:5], hidden=(4,), epochs=1)
    with pytest.raises(ValueError, match=r"sizes\[1\]"):
        bn.make_mlp([3, 2.5, 2])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="finite K"):
        bn.ScaledSigmoid(float("inf"))
