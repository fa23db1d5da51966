"""Findings of a random search over extreme but finite magnitudes: rules on inputs scaled by a
power of two give the scaled output (distance-based rules used to lose every squared distance
to underflow on tiny inputs and pick an attacker's row)."""

import pytest
import torch

import byzlearn.aggregators as agg


def _attacked(dtype: torch.dtype) -> torch.Tensor:
    """Nine rows of 16 coordinates, the first two (the attack) far from the honest seven."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(9, 16, dtype=torch.float64, generator=g)
    X[:2] = 50.0
    return X.to(dtype)


@pytest.mark.parametrize(
    ("dtype", "exponent"),
    [(torch.float64, -540), (torch.float64, -1000), (torch.float32, -80), (torch.float32, -115),
     (torch.bfloat16, -115)],
)
@pytest.mark.parametrize(
    "name",
    ["krum", "medoid", "geometric_median", "centered_clipping", "arc+average", "nnm+median",
     "multi_krum", "cge"],
)
def test_tiny_inputs_keep_their_distances(name: str, dtype: torch.dtype, exponent: int) -> None:
    """Squared distances of tiny rows underflowed to 0 (or to a few subnormals): Krum chose the
    attacker's row at 2^-540 in float64 and 2^-80 in float32; now the rule runs on the rows
    rescaled by a power of two and its output is scaled back, exactly."""
    X = _attacked(dtype)
    c = 2.0**exponent
    reference = agg.aggregate(name, X, f=2)
    scaled = agg.aggregate(name, (X.double() * c).to(dtype), f=2)
    assert scaled.vector.dtype == dtype
    out = scaled.vector.double() / c
    ref = reference.vector.double()
    assert torch.allclose(out, ref, rtol=1e-6, atol=0.0), (out - ref).abs().max()
    if reference.kept is not None:
        assert torch.equal(scaled.kept, reference.kept)


def test_clipping_radius_scales_with_the_retry() -> None:
    """An absolute option (clipping's max_norm) is rescaled with the rows."""
    X = _attacked(torch.float64)
    c = 2.0**-1000
    ref = agg.aggregate("clipping+krum", X, f=2, max_norm=3.0).vector
    out = agg.aggregate("clipping+krum", X * c, f=2, max_norm=3.0 * c).vector / c
    assert torch.allclose(out, ref, rtol=1e-9, atol=0.0)


def test_equal_and_zero_rows_unchanged() -> None:
    """All-equal tiny rows and all-zero rows: the same output, no refusal."""
    row = torch.randn(16, dtype=torch.float64) * 2.0**-1000
    X = row.repeat(7, 1)
    assert torch.equal(agg.aggregate("krum", X, f=2).vector, row)
    Z = torch.zeros(7, 16)
    assert torch.equal(agg.aggregate("krum", Z, f=2).vector, torch.zeros(16))


def test_subnormal_rows_need_a_scale_beyond_the_float_range() -> None:
    """Rows near 2^-1060 (float64 subnormals) need a factor of 2^1060, itself not a float: it is
    applied in two steps (it raised 'overflow' and refused, calling the rows non-finite)."""
    X = torch.tensor([[1.0, 2.0], [1.0, 2.0], [-3.0, 0.0], [-2.0, 1.0], [-3.0, 1.0], [-2.0, 0.0],
                      [-3.0, 0.5]], dtype=torch.float64)
    X[:2] *= 64.0  # the attack
    c = 2.0**-1066
    res = agg.aggregate("krum", X * c, f=2)
    ref = agg.aggregate("krum", X, f=2)
    assert torch.equal(res.kept, ref.kept)
    assert torch.equal(res.vector, ref.vector * c)


@pytest.mark.parametrize(
    ("dtype", "exponent"),
    [(torch.float64, -540), (torch.float64, -1000), (torch.float64, 500),
     (torch.float32, -80), (torch.float32, -115), (torch.float32, 80), (torch.float32, 120)],
)
@pytest.mark.parametrize("name", ["signguard", "dnc"])
def test_filters_without_gram_are_scale_equivariant(
    name: str, dtype: torch.dtype, exponent: int
) -> None:
    """SignGuard's row norms (summed in the input precision) underflowed to 0 or overflowed to
    inf at extreme magnitudes (an infinite norm was an outlier), and DnC's float64 scores of
    rows near 2^-1000 read 0: rule(2^k X) / 2^k was 2-77 % off rule(X) with the same seed.
    Now they run on the rows times a power of two and divide the output back, exactly."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(9, 64, dtype=torch.float64, generator=g)
    X[:2] = 4.0 * X[:2] - 1.0  # the attack: larger rows with other signs
    X[2] *= 2.5  # an honest row above the median norm (clipped by SignGuard)
    X = X.to(dtype)
    c = 2.0**exponent
    ref = agg.aggregate(name, X, f=2, seed=5)
    scaled = agg.aggregate(name, (X.double() * c).to(dtype), f=2, seed=5)
    assert scaled.vector.dtype == dtype
    out = scaled.vector.double() / c
    assert torch.allclose(out, ref.vector.double(), rtol=1e-6, atol=0.0), (
        (out - ref.vector.double()).abs().max()
    )
    assert torch.equal(scaled.kept, ref.kept)
