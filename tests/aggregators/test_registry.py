"""The registry: names, lookup, composition, option checking, input kinds, requirement errors."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import byzlearn.aggregators as agg

RULES = agg.names("rule")
PRE = agg.names("pre")

# Options some rules need to run at all.
REQUIRED_OPTIONS = {"clipping": {"max_norm": 1.0}}
# Smallest n for f = 2 under each rule's requirement.
MIN_N_F2 = {"krum": 7, "multi_krum": 7, "bulyan": 11}


def _inputs(n: int = 25, d: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_names_lists_every_rule_and_preaggregator():
    expected_rules = {
        "average",
        "median",
        "trimmed_mean",
        "meamed",
        "phocas",
        "krum",
        "multi_krum",
        "medoid",
        "geometric_median",
        "mda",
        "bulyan",
        "centered_clipping",
        "cge",
    }
    assert expected_rules <= set(RULES)
    assert {"nnm", "bucketing", "arc", "clipping"} <= set(PRE)
    assert set(agg.names()) == set(RULES) | set(PRE)
    assert agg.names() == sorted(agg.names())


def test_module_attributes_are_the_registered_callables():
    for name in agg.names():
        assert getattr(agg, name) is agg.get(name)


@pytest.mark.parametrize("name", agg.names())
def test_every_public_rule_has_a_docstring_with_a_reference(name):
    doc = agg.get(name).__doc__
    assert doc and len(doc) > 80
    venues = ("Reference", "reference", "NeurIPS", "ICML", "ICLR", "arXiv")
    assert any(word in doc for word in venues)
    assert "Requirement" in doc or "requirement" in doc or name in {"clipping", "arc"}


def test_unknown_name_raises_key_error_listing_known_names():
    with pytest.raises(KeyError, match=r"unknown aggregator 'krumm'.*krum"):
        agg.get("krumm")
    with pytest.raises(TypeError):
        agg.get("")


@pytest.mark.parametrize("name", agg.names())
def test_unknown_option_raises_type_error_naming_it(name):
    with pytest.raises(TypeError, match="bogus_option"):
        agg.get(name)(_inputs(), f=1, bogus_option=3, **REQUIRED_OPTIONS.get(name, {}))


def test_rule_before_plus_is_rejected():
    with pytest.raises(ValueError, match="only pre-aggregators"):
        agg.get("krum+median")


@pytest.mark.parametrize(
    ("name", "n", "f", "text"),
    [
        ("krum", 7, 3, "krum needs n >= 2f + 3, got n=7, f=3"),
        ("multi_krum", 8, 3, "multi_krum needs n >= 2f + 3, got n=8, f=3"),
        ("bulyan", 14, 3, "bulyan needs n >= 4f + 3, got n=14, f=3"),
        ("median", 6, 3, "median needs n >= 2f + 1, got n=6, f=3"),
        ("trimmed_mean", 4, 2, "trimmed_mean needs n >= 2f + 1, got n=4, f=2"),
        ("mda", 4, 2, "mda needs n >= 2f + 1, got n=4, f=2"),
        ("geometric_median", 2, 1, "geometric_median needs n >= 2f + 1, got n=2, f=1"),
    ],
)
def test_requirement_error_message(name, n, f, text):
    with pytest.raises(ValueError, match=text.replace("+", r"\+")):
        agg.get(name)(_inputs(n), f=f)
    with pytest.raises(ValueError, match=text.replace("+", r"\+")):
        agg.check(name, n, f)
    agg.check(name, agg.spec(name).min_n(f), f)  # just enough: no error


def test_requirement_of_a_composition_is_checked_after_the_preaggregator():
    # bucketing of 25 into ceil(25 / 2) = 13 buckets; Krum with f = 5 needs 13 >= 13: fine.
    agg.check("bucketing+krum", 25, 5)
    agg.get("bucketing+krum")(_inputs(), f=5, seed=0)
    # With buckets of 3 there are 9 buckets < 13.
    with pytest.raises(ValueError, match="krum needs n >= 2f \\+ 3, got n=9, f=5"):
        agg.get("bucketing+krum")(_inputs(), f=5, bucket_size=3, seed=0)


@pytest.mark.parametrize("f", [-1, 1.5, "2", True, None])
def test_bad_f(f):
    with pytest.raises((TypeError, ValueError), match="f must be"):
        agg.median(_inputs(), f=f)


def test_numpy_integer_f_is_accepted():
    X = _inputs()
    assert torch.equal(agg.median(X, f=np.int64(3)), agg.median(X, f=3))


@pytest.mark.parametrize(
    ("vectors", "match"),
    [
        (torch.randn(5), "shape"),
        (torch.randn(0, 4), "no vectors"),
        (torch.randn(4, 0), "empty"),
        ([], "empty sequence"),
        ([torch.randn(3), torch.randn(4)], "one shape"),
        ([np.zeros(3), np.zeros(4)], "one shape"),
        ([torch.randn(3), np.zeros(3)], "only tensors or only arrays"),
        ("abc", "must be a tensor"),
        (torch.randn(4, 3, dtype=torch.complex64), "complex"),
    ],
)
def test_bad_vectors_raise(vectors, match):
    with pytest.raises((TypeError, ValueError), match=match):
        agg.average(vectors, f=0)


@pytest.mark.parametrize("name", agg.names("rule"))
def test_output_matches_input_kind_dtype_and_shape(name):
    f = 1
    n = MIN_N_F2.get(name, 9)
    g = torch.Generator().manual_seed(1)
    base = torch.randn(n, 2, 3, 4, generator=g, dtype=torch.float64)
    # rules drawing random coordinates (fresh per call by default) get a fixed seed here
    seeded = {"seed": 0} if "seed" in agg.spec(name).options else {}
    rule = functools.partial(agg.get(name), **seeded)
    for dtype in (torch.float32, torch.float64):
        out = rule(base.to(dtype), f=f)
        assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == (2, 3, 4)
    out_np = rule(base.numpy(), f=f)
    assert isinstance(out_np, np.ndarray) and out_np.shape == (2, 3, 4)
    out_list = rule([row.reshape(-1) for row in base], f=f)
    assert out_list.shape == (24,)
    out_list_np = rule([row.reshape(-1).numpy() for row in base], f=f)
    assert isinstance(out_list_np, np.ndarray)
    out_int = rule(torch.arange(n * 4).reshape(n, 4), f=f)
    assert out_int.dtype == torch.get_default_dtype()
    out_half = rule(base.reshape(n, -1).half(), f=f)
    assert out_half.dtype == torch.float16  # computed in float32, returned in the input dtype
    np.testing.assert_allclose(out_np.reshape(-1), rule(base, f=f).reshape(-1).numpy())


@pytest.mark.parametrize("name", agg.names())
def test_caller_input_is_not_modified(name):
    X = _inputs(13, 30)
    X[2, 4] = float("nan")
    X_np = X.numpy().copy()
    before = X.clone()
    options = REQUIRED_OPTIONS.get(name, {})
    try:
        agg.get(name)(X, f=2, **options)
        agg.get(name)(X_np, f=2, **options)
    except ValueError:
        pass  # a rule may refuse the NaN row; it still must not write into the input
    assert torch.equal(torch.nan_to_num(X, nan=7.0), torch.nan_to_num(before, nan=7.0))
    expected = np.nan_to_num(before.numpy(), nan=7.0)
    np.testing.assert_array_equal(np.nan_to_num(X_np, nan=7.0), expected)


def test_requires_grad_inputs_are_detached():
    X = _inputs().requires_grad_()
    out = agg.krum(X, f=3)
    assert not out.requires_grad
    out = agg.median(X, f=3)
    assert not out.requires_grad


def test_preaggregator_returns_vectors_in_caller_kind():
    X = _inputs(10, 6)
    out = agg.nnm(X, f=2)
    assert out.shape == (10, 6)
    out = agg.bucketing(X.numpy(), f=2, seed=0)
    assert isinstance(out, np.ndarray) and out.shape == (5, 6)
    assert agg.is_preaggregator("nnm") and agg.is_preaggregator("nnm+bucketing")
    assert not agg.is_preaggregator("nnm+krum")


def test_composition_equals_manual_chaining():
    X = _inputs(25, 50, seed=3)
    manual = agg.krum(agg.nnm(X, f=5), f=5)
    composed = agg.get("nnm+krum")(X, f=5)
    torch.testing.assert_close(composed, manual)
    manual = agg.trimmed_mean(agg.arc(agg.nnm(X, f=5), f=5), f=5)
    torch.testing.assert_close(agg.get("nnm+arc+trimmed_mean")(X, f=5), manual)


def test_composition_routes_options_and_rejects_ambiguity():
    X = _inputs(25, 20)
    out = agg.get("bucketing+multi_krum")(X, f=2, bucket_size=2, seed=4, m=3)
    manual = agg.multi_krum(agg.bucketing(X, f=2, bucket_size=2, seed=4), f=2, m=3)
    torch.testing.assert_close(out, manual)
    # An option accepted by two components must be routed explicitly.
    with pytest.raises(TypeError, match="several components"):
        agg.get("clipping+arc+clipping+median")(X, f=1, max_norm=1.0)
    out = agg.get("clipping+median")(X, f=1, clipping_options={"max_norm": 0.5})
    torch.testing.assert_close(out, agg.median(agg.clipping(X, f=1, max_norm=0.5), f=1))


def test_selected_indices_of_composition_and_non_selecting_rules():
    X = _inputs(25, 20)
    X[[1, 5, 9]] += 100.0
    idx = agg.selected_indices("multi_krum", X, f=3)
    assert set(idx.tolist()).isdisjoint({1, 5, 9}) and len(idx) == 22
    assert agg.selected_indices("krum", X, f=3).numel() == 1
    mixed = agg.selected_indices("nnm+krum", X, f=3)
    assert len(mixed) == 22 and set(mixed.tolist()).isdisjoint({1, 5, 9})
    with pytest.raises(TypeError, match="does not select"):
        agg.selected_indices("median", X, f=3)


def test_signature_exposes_options():
    import inspect

    params = inspect.signature(agg.multi_krum).parameters
    assert list(params)[:3] == ["vectors", "f", "m"]


def test_call_options_add_a_centre_and_a_keyed_generator_only_where_they_belong():
    import torch

    c = torch.ones(3)
    cc = agg.call_options("centered_clipping", {"radius": 1.0}, centre=c, key=(0, "rule", 1))
    assert cc["center"] is c and "generator" not in cc and cc["radius"] == 1.0
    given = agg.call_options("centered_clipping", {"center": c * 2}, centre=c)
    assert torch.equal(given["center"], c * 2)  # the config's own centre wins
    b = agg.call_options("bucketing+median", {}, centre=c, key=(0, "rule", 1))
    assert "center" not in b
    again = agg.call_options("bucketing+median", {}, key=(0, "rule", 1))["generator"]
    assert torch.equal(torch.rand(4, generator=b["generator"]), torch.rand(4, generator=again))
    assert "generator" not in agg.call_options("bucketing+median", {"seed": 3}, key=(0,))
    assert agg.call_options("krum", {}, centre=c, key=(0,)) == {}


def test_call_options_give_each_randomised_part_of_a_composition_its_own_generator():
    """bucketing+dnc: both parts draw; a plain ``generator`` option is ambiguous there (the
    call raised TypeError at a training run's first round), so each part gets its own keyed
    generator in its ``<part>_options``; a part's own seed is kept."""
    import torch

    X = torch.randn(12, 40)
    opts = agg.call_options("bucketing+dnc", {}, key=(0, "rule", 1))
    assert "generator" not in opts and set(opts) == {"bucketing_options", "dnc_options"}
    g_b, g_d = opts["bucketing_options"]["generator"], opts["dnc_options"]["generator"]
    assert not torch.equal(torch.rand(4, generator=g_b), torch.rand(4, generator=g_d))
    runs = [
        agg.aggregate("bucketing+dnc", X, f=1, **agg.call_options("bucketing+dnc", {}, key=(5,)))
        for _ in range(2)
    ]
    assert torch.equal(runs[0].vector, runs[1].vector)
    seeded = agg.call_options("bucketing+dnc", {"dnc_options": {"seed": 3}}, key=(0,))
    assert seeded["dnc_options"] == {"seed": 3} and "generator" in seeded["bucketing_options"]


def test_equal_weights_put_one_over_the_count_on_the_rows_given():
    from byzlearn.aggregators._registry import equal_weights

    w = equal_weights(7, np.array([5, 1, 2]))
    assert w.dtype == torch.float64 and w.shape == (7,)
    assert w.tolist() == [0.0, 1 / 3, 1 / 3, 0.0, 0.0, 1 / 3, 0.0]
    assert equal_weights(3, 2).tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("name", ["krum+", "+krum", "nnm++krum", "nnm+ +krum"])
def test_a_composition_with_an_empty_part_says_so(name):
    """An empty part of a composed name is one line naming the name and the form it takes (it
    was "a aggregator name must be a non-empty string, got ''")."""
    with pytest.raises(ValueError, match=r"an empty part; compose names as 'pre\+rule'"):
        agg.get(name)
    with pytest.raises(ValueError, match="an empty part"):
        agg.check(name, 10, 1)


@pytest.mark.parametrize("name", [*agg.names(), "nnm+krum", "bucketing+median", "arc+bulyan"])
def test_largest_f_is_the_largest_f_the_rule_runs_with(name):
    """Its bisection (requirements grow with f) gives what trying every f' from f down gives,
    and a huge f costs a few checks."""

    def scan(n: int, f: int) -> int | None:
        for g in range(f, -1, -1):
            try:
                agg.check(name, n, g)
            except ValueError:
                continue
            return g
        return None

    for n in range(0, 24):
        for f in range(-1, 12):
            assert agg.largest_f(name, n, f) == scan(n, f)
    try:  # a rule without a requirement on f (average) runs with any f
        agg.check(name, 40, 10**9)
        expected = 10**9
    except ValueError:  # the others with fewer than the 40 inputs
        expected = scan(40, 40)
    assert agg.largest_f(name, 40, 10**9) == expected
