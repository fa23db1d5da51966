"""Worst-case Forward Error Propagation (FEP) bounds for crashed and Byzantine neurons and synapses.

Reference: El Mhamdi & Guerraoui, *When Neurons Fail*, IPDPS 2017 (arXiv 1706.08884). With f_l
failed neurons in hidden layer l (1..L), N_l neurons, a K-Lipschitz activation, |w| ≤ w_m and a
per-neuron error e_max, the output error is at most

    FEP = Σ_{l=1}^{L} f_l · e_max · w_m · Π_{l'=l+1}^{L} K · w_m · (N_{l'} − f_{l'}).

Derivation (the one implemented, with e = faulty − fault-free outputs of a layer and
A_l = Σ_i |e_l[i]|, the ℓ1 error of hidden layer l; A_0 = 0 because inputs are exact):

* a failed neuron's error is |v − h| ≤ e_max, where h is its fault-free value in [lo, hi] and v the
  value it sends: v = 0 (crash, e_max = max(|lo|, |hi|) = C) or v in [blo, bhi] (Byzantine,
  e_max = max(bhi − lo, hi − blo); by default [blo, bhi] = [min(lo, 0), max(hi, 0)], the
  activation's range, or [−B, B] for a user bound B);
* a correct neuron i: |e_l[i]| ≤ K_l·|Δz_i| ≤ K_l·Σ_j |W_l[i, j]|·|e_{l−1}[j]|, and also
  |e_l[i]| ≤ hi − lo for an intrinsically bounded activation;
* a failed synapse j → i transmits v instead of h_j, adding |W_ij|·|v − h_j| ≤ |W_ij|·e_syn to
  |Δz_i| (e_syn computed as e_max on the source layer's interval; the input interval for the
  first Linear);

hence A_l ≤ f_l·e_max,l + K_l·(c_l·A_{l−1} + S_l), and the output error (max over outputs,
‖Δy‖∞) is ≤ K_out·(max|W_out|·A_L + S_out). Two choices of c_l and S_l, both valid upper bounds:

* ``method="paper"``: c_l = (N_l − f_l)·w_m and S_l = s_l·w_m·e_syn with w_m = max |w| over the
  whole network. This is exactly the formula above (plus the synapse term of the paper);
* ``method="tight"`` (default): c_l = max over columns j of the sum of the N_l − f_l largest
  |W_l[i, j]| (the failed set is adversarial), S_l = sum of the s_l largest |W_l| entries times
  e_syn, w_m per layer, and the saturation cap Σ_i min(K|Δz_i|, hi − lo) ≤ (N_l − f_l)(hi − lo)
  for bounded activations. It is never larger than the paper bound.

The bounds hold for every input whose fault-free activations lie in the layers' intervals (always
for Sigmoid/Tanh; for ReLU-like layers, see :func:`byzlearn.neurons.network.extract_network`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from byzlearn.neurons._checks import check_int, check_real
from byzlearn.neurons.network import Network

__all__ = [
    "FaultMode",
    "byzantine_interval",
    "fep_bound",
    "max_failures",
    "neuron_error",
    "paper_fep",
    "tolerates",
]

FaultMode = Literal["crash", "byzantine"]
Method = Literal["tight", "paper"]


def _interval_error(
    lo: float, hi: float, mode: str, byzantine_bound: float | None, what: str
) -> float:
    """e_max for one failed unit whose fault-free value lies in [lo, hi]."""
    if mode not in ("crash", "byzantine"):
        raise ValueError(f"mode must be 'crash' or 'byzantine', got {mode!r}")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(
            f"{what} has no finite output interval (unbounded activation): pass C=... or data=... "
            "to extract_network (or input_bounds for the inputs)"
        )
    if mode == "crash":
        return max(abs(lo), abs(hi))
    if byzantine_bound is not None and not byzantine_bound >= 0:
        raise ValueError(f"byzantine_bound must be >= 0, got {byzantine_bound}")
    blo, bhi = byzantine_interval(lo, hi, byzantine_bound)
    return max(bhi - lo, hi - blo, 0.0)


def neuron_error(
    net: Network, layer: int, mode: FaultMode = "crash", byzantine_bound: float | None = None
) -> float:
    """e_max of one failed neuron of hidden ``layer``: max |v − h| over the allowed v and h.

    Crash: C = max(|lo|, |hi|). Byzantine: max(bhi − lo, hi − blo) with [blo, bhi] the values a
    Byzantine neuron may send (the layer's interval widened to contain 0, or [−B, B] with
    ``byzantine_bound=B``).
    Reference: *When Neurons Fail* (IPDPS 2017), e_max ≤ C for crashes, the channel capacity for
    Byzantine neurons.
    """
    lay = net.layers[net.check_hidden(layer)]
    return _interval_error(lay.lo, lay.hi, mode, byzantine_bound, f"layer {lay.name!r}")


def _synapse_error(net: Network, k: int, mode: str, byzantine_bound: float | None) -> float:
    if k == 0:
        return _interval_error(net.in_lo, net.in_hi, mode, byzantine_bound, "the input layer")
    src = net.layers[k - 1]
    return _interval_error(src.lo, src.hi, mode, byzantine_bound, f"layer {src.name!r}")


def byzantine_interval(lo: float, hi: float, byzantine_bound: float | None) -> tuple[float, float]:
    """Values a Byzantine unit may send: [min(lo, 0), max(hi, 0)] by default, else [−B, B].

    The default is the layer's interval widened to contain 0, so that a Byzantine neuron can at
    least do what a crashed one does (this matters when [lo, hi] was observed on data).
    """
    if byzantine_bound is None:
        return min(lo, 0.0), max(hi, 0.0)
    return -float(byzantine_bound), float(byzantine_bound)


def _counts(values: Sequence[int] | None, n: int, caps: list[int], what: str) -> list[int]:
    if values is None:
        return [0] * n
    vals = list(values)
    if len(vals) != n:
        raise ValueError(f"{what} needs {n} entries, got {len(vals)}")
    pairs = enumerate(zip(vals, caps, strict=True))
    return [check_int(v, f"{what}[{i}]", 0, cap) for i, (v, cap) in pairs]


def _top_sum_columns(absw: torch.Tensor, keep: int) -> float:
    """max_j of the sum of the ``keep`` largest entries of column j of |W|."""
    if keep <= 0:
        return 0.0
    top = torch.topk(absw, k=keep, dim=0).values
    return float(top.sum(dim=0).max())


def _top_sum(absw: torch.Tensor, s: int) -> float:
    if s <= 0:
        return 0.0
    return float(torch.topk(absw.flatten(), k=s).values.sum())


def fep_bound(
    net: Network,
    neurons: Sequence[int] | None = None,
    synapses: Sequence[int] | None = None,
    mode: FaultMode = "crash",
    byzantine_bound: float | None = None,
    method: Method = "tight",
) -> float:
    """Upper bound on max_k |ỹ_k − y_k| (the output error, for every input) under the failures.

    Args:
        net: the analysed network (:func:`byzlearn.neurons.network.extract_network`).
        neurons: f_l, failed neurons per hidden layer (length L).
        synapses: s_k, failed synapses per Linear module (length L + 1; index L is the output
            Linear).
        mode: ``"crash"`` (failed units send 0) or ``"byzantine"`` (any value in the allowed
            interval).
        byzantine_bound: B, Byzantine units send values in [−B, B] (default: the layer's range).
        method: ``"tight"`` or ``"paper"`` (see the module docstring).

    Returns:
        The bound (0 when nothing fails). Formula: FEP of El Mhamdi & Guerraoui, *When Neurons
        Fail* (IPDPS 2017), computed by the recursion A_l ≤ f_l·e_max + K_l(c_l·A_{l−1} + S_l).
    """
    if method not in ("tight", "paper"):
        raise ValueError(f"method must be 'tight' or 'paper', got {method!r}")
    L = net.num_hidden
    f = _counts(neurons, L, net.hidden_sizes, "neurons")
    s = _counts(synapses, L + 1, [lay.n_out * lay.n_in for lay in net.layers], "synapses")
    if mode not in ("crash", "byzantine"):
        raise ValueError(f"mode must be 'crash' or 'byzantine', got {mode!r}")
    absws = [lay.weight.detach().abs() for lay in net.layers]
    w_glob = max(float(a.max()) for a in absws)
    A = 0.0
    for k, lay in enumerate(net.layers):
        absw = absws[k]
        e_syn = _synapse_error(net, k, mode, byzantine_bound) if s[k] > 0 else 0.0
        is_out = k == L
        fk = 0 if is_out else f[k]
        if method == "paper":
            gain = w_glob if is_out else (lay.n_out - fk) * w_glob
            syn = s[k] * w_glob * e_syn
        else:
            gain = float(absw.max()) if is_out else _top_sum_columns(absw, lay.n_out - fk)
            syn = _top_sum(absw, s[k]) * e_syn
        dz = gain * A + syn
        prop = lay.act.K * dz
        if method == "tight" and lay.act.bounded:
            width = lay.act.hi - lay.act.lo
            prop = min(prop, width if is_out else (lay.n_out - fk) * width)
        if is_out:
            return prop
        e_n = neuron_error(net, k, mode, byzantine_bound) if fk > 0 else 0.0
        A = fk * e_n + prop
    raise AssertionError("unreachable")  # pragma: no cover


def paper_fep(N: Sequence[int], f: Sequence[int], K: float, w_m: float, e_max: float) -> float:
    """The closed form of *When Neurons Fail* (IPDPS 2017) for one K, w_m and e_max:

    FEP = Σ_{l=1}^{L} f_l · e_max · w_m · Π_{l'=l+1}^{L} K · w_m · (N_{l'} − f_{l'}).
    """
    if len(N) != len(f):
        raise ValueError("N and f must have the same length")
    N = [check_int(n, f"N[{i}]", 1) for i, n in enumerate(N)]
    f = [check_int(v, f"f[{i}]", 0, n) for i, (v, n) in enumerate(zip(f, N, strict=True))]
    K = check_real(K, "K", 0.0)
    w_m = check_real(w_m, "w_m", 0.0)
    e_max = check_real(e_max, "e_max", 0.0)
    total = 0.0
    for l in range(len(N)):
        term = f[l] * e_max * w_m
        for lp in range(l + 1, len(N)):
            term *= K * w_m * (N[lp] - f[lp])
        total += term
    return total


def _check_epsilons(epsilon: float, epsilon_prime: float) -> None:
    """ε > 0 and 0 ≤ ε' < ε (one line naming the bad argument)."""
    epsilon = check_real(epsilon, "epsilon", 0.0, lo_open=True)
    if not check_real(epsilon_prime, "epsilon_prime", 0.0) < epsilon:
        raise ValueError(f"epsilon_prime must be in [0, epsilon), got {epsilon_prime!r}")


def tolerates(
    net: Network,
    neurons: Sequence[int] | None,
    epsilon: float,
    synapses: Sequence[int] | None = None,
    mode: FaultMode = "crash",
    byzantine_bound: float | None = None,
    epsilon_prime: float = 0.0,
    method: Method = "tight",
) -> bool:
    """True when FEP ≤ ε − ε': the failures (f_1..f_L, s_1..s_{L+1}) keep the output error below ε.

    ε' is the approximation error of the fault-free network (*When Neurons Fail*, IPDPS 2017).
    """
    _check_epsilons(epsilon, epsilon_prime)
    b = fep_bound(net, neurons, synapses, mode, byzantine_bound, method)
    return b <= epsilon - epsilon_prime


def _layer_caps(net: Network, kind: str) -> list[int]:
    if kind == "neurons":
        return net.hidden_sizes
    if kind == "synapses":
        return [lay.n_out * lay.n_in for lay in net.layers]
    raise ValueError(f"kind must be 'neurons' or 'synapses', got {kind!r}")


def max_failures(
    net: Network,
    epsilon: float,
    mode: FaultMode = "crash",
    kind: Literal["neurons", "synapses"] = "neurons",
    byzantine_bound: float | None = None,
    epsilon_prime: float = 0.0,
    method: Method = "tight",
) -> list[int]:
    """For each layer alone, the largest number of failures whose FEP stays ≤ ε − ε'.

    Returns one count per hidden layer (``kind="neurons"``) or per Linear (``"synapses"``). The FEP
    of failures confined to one layer is non-decreasing in their number, so a binary search is
    exact. Reference: *When Neurons Fail* (IPDPS 2017).
    """
    caps = _layer_caps(net, kind)
    _check_epsilons(epsilon, epsilon_prime)
    budget = epsilon - epsilon_prime
    out = []
    for l, cap in enumerate(caps):

        def bound(n: int, l: int = l) -> float:
            counts = [0] * len(caps)
            counts[l] = n
            if kind == "neurons":
                return fep_bound(net, counts, None, mode, byzantine_bound, method)
            return fep_bound(net, None, counts, mode, byzantine_bound, method)

        lo, hi = 0, cap  # invariant: bound(lo) <= budget (bound(0) = 0)
        if bound(hi) <= budget:
            out.append(cap)
            continue
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if bound(mid) <= budget:
                lo = mid
            else:
                hi = mid
        out.append(lo)
    return out
