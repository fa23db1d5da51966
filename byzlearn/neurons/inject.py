"""Fault injection: measure the real output error under crashed or Byzantine neurons and synapses.

Three tools:

* :func:`random_faults`: f_l random neurons per hidden layer and/or s_k random synapses per Linear
  fail (crash: send 0; Byzantine: send a value drawn uniformly in the allowed interval); repeated
  ``reps`` times, with the mean error and a confidence interval over repetitions.
* :func:`worst_case_search`: an adversary picks which units fail and what Byzantine units send
  (the endpoints of the allowed interval) to maximise the error on a batch; exhaustive when the
  number of configurations is small, otherwise greedy construction + swap local search with random
  restarts. The result is a *lower* bound on the true worst case, to compare with the FEP upper
  bound of :mod:`byzlearn.neurons.fep` (El Mhamdi & Guerraoui, *When Neurons Fail*, IPDPS 2017).
* :func:`module_faults` / :func:`with_crashed_synapses`: the same faults on the real
  ``nn.Module`` (forward hooks; a copy with zeroed weights), for users who want to run their own
  code under faults.

The error of one input is ‖ỹ − y‖∞ = max_k |ỹ_k − y_k| (faulty minus fault-free output).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from byzlearn.neurons._checks import check_batch, check_choice, check_index, check_int
from byzlearn.neurons.fep import FaultMode, _counts, byzantine_interval
from byzlearn.neurons.network import Network

__all__ = [
    "InjectionStats",
    "Unit",
    "WorstCase",
    "confidence_interval",
    "evaluate_configs",
    "module_faults",
    "output_error",
    "random_faults",
    "with_crashed_synapses",
    "worst_case_search",
]

#: One failed unit: (kind, layer, flat index, value sent). kind is "neuron" (hidden layer index,
#: neuron index) or "synapse" (Linear index, flat index i·in + j of the weight W[i, j]).
Unit = tuple[str, int, int, float]


def output_error(y_faulty: torch.Tensor, y_ref: torch.Tensor) -> torch.Tensor:
    """Per-input output error max_k |ỹ_k − y_k| (reduces the last axis)."""
    return (y_faulty - y_ref).abs().amax(dim=-1)


def confidence_interval(
    samples: torch.Tensor,
    level: float = 0.95,
    method: Literal["normal", "bootstrap"] = "normal",
    seed: int = 0,
    n_boot: int = 2000,
) -> tuple[float, float]:
    """Confidence interval for the mean of ``samples`` (1-D).

    ``normal``: mean ± z_{(1+level)/2}·s/√R (s: sample standard deviation, R repetitions).
    ``bootstrap``: percentile interval of the means of ``n_boot`` resamples with replacement.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    x = samples.detach().double().flatten()
    R = x.numel()
    if R == 0:
        raise ValueError("no samples")
    mean = float(x.mean())
    if R == 1:
        return mean, mean
    if method == "normal":
        z = math.sqrt(2.0) * float(torch.erfinv(torch.tensor(level, dtype=torch.float64)))
        half = z * float(x.std()) / math.sqrt(R)
        return mean - half, mean + half
    if method == "bootstrap":
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, R, (n_boot, R), generator=g)
        means = x[idx].mean(dim=1)
        a = (1 - level) / 2
        return float(torch.quantile(means, a)), float(torch.quantile(means, 1 - a))
    raise ValueError(f"method must be 'normal' or 'bootstrap', got {method!r}")


@dataclass
class InjectionStats:
    """Measured error over repetitions of random faults.

    Attributes:
        samples: (reps,) error of each repetition (mean or max over the batch, see ``reduce``).
        mean: mean of ``samples``; low, high: its confidence interval (``level``, ``ci``).
        max: the largest error seen (over repetitions and inputs).
    """

    samples: torch.Tensor
    mean: float
    low: float
    high: float
    max: float
    level: float = 0.95
    ci: str = "normal"


@dataclass
class WorstCase:
    """Result of :func:`worst_case_search`: the largest error found and the faults achieving it."""

    error: float
    units: list[Unit] = field(default_factory=list)
    method: str = "exhaustive"
    evaluated: int = 0


def _check_x(net: Network, x: torch.Tensor) -> torch.Tensor:
    """The batch ``x`` checked (:func:`check_batch`), in the network's dtype."""
    return check_batch(x, "x", net.in_features).to(net.layers[0].weight.dtype)


def _groups(
    net: Network,
    neurons: Sequence[int] | None,
    synapses: Sequence[int] | None,
    mode: str,
    byzantine_bound: float | None,
) -> list[tuple[str, int, int, int, list[float]]]:
    """(kind, layer, count, n_candidates, value set) for every layer where units fail."""
    if mode not in ("crash", "byzantine"):
        raise ValueError(f"mode must be 'crash' or 'byzantine', got {mode!r}")
    L = net.num_hidden
    f = _counts(neurons, L, net.hidden_sizes, "neurons")
    s = _counts(synapses, L + 1, [lay.n_out * lay.n_in for lay in net.layers], "synapses")
    out = []
    for l, fl in enumerate(f):
        if fl:
            lay = net.layers[l]
            out.append(
                ("neuron", l, fl, lay.n_out, _value_set(lay.lo, lay.hi, mode, byzantine_bound))
            )
    for k, sk in enumerate(s):
        if sk:
            lo, hi = (
                (net.in_lo, net.in_hi) if k == 0 else (net.layers[k - 1].lo, net.layers[k - 1].hi)
            )
            lay = net.layers[k]
            out.append(
                ("synapse", k, sk, lay.n_out * lay.n_in, _value_set(lo, hi, mode, byzantine_bound))
            )
    return out


def _value_set(lo: float, hi: float, mode: str, byzantine_bound: float | None) -> list[float]:
    if mode == "crash":
        return [0.0]
    blo, bhi = byzantine_interval(lo, hi, byzantine_bound)
    if not (math.isfinite(blo) and math.isfinite(bhi)):
        raise ValueError(
            "Byzantine values need a finite interval: pass C/data to "
            "extract_network or byzantine_bound"
        )
    return [blo] if blo == bhi else [blo, bhi]


def _unit_layer(net: Network, kind: str, layer: object) -> int:
    """Layer of a :data:`Unit`: a hidden layer for neurons, a Linear index for synapses."""
    if kind == "neuron":
        return check_index(layer, "neuron layer", net.num_hidden)
    return check_index(layer, "synapse layer (Linear index)", len(net.layers))


def evaluate_configs(
    net: Network,
    x: torch.Tensor,
    configs: Sequence[Sequence[Unit]],
    reduce: Literal["max", "mean"] = "max",
    y_ref: torch.Tensor | None = None,
    chunk: int = 256,
) -> torch.Tensor:
    """Error of each fault configuration on the batch ``x``: (M,) tensor.

    Each configuration is a list of :data:`Unit`. The per-input error ‖ỹ − y‖∞ is reduced over
    the batch by ``max`` (worst input) or ``mean``.
    """
    check_choice(reduce, "reduce", ("max", "mean"))
    x = _check_x(net, x)
    with torch.no_grad():
        if y_ref is None:
            y_ref = net.forward(x)
        out = []
        for start in range(0, len(configs), chunk):
            block = configs[start : start + chunk]
            M = len(block)
            entries: dict[tuple[str, int], tuple[list[int], list[int], list[float]]] = {}
            for m, cfg in enumerate(block):
                for kind, layer, idx, value in cfg:
                    rows, cols, vals = entries.setdefault((kind, layer), ([], [], []))
                    rows.append(m)
                    cols.append(idx)
                    vals.append(value)
            nm: dict[int, torch.Tensor] = {}
            nv: dict[int, torch.Tensor] = {}
            sm: dict[int, torch.Tensor] = {}
            sv: dict[int, torch.Tensor] = {}
            for (kind, layer), (rows, cols, vals) in entries.items():
                if kind not in ("neuron", "synapse"):
                    raise ValueError(f"unknown unit kind {kind!r}")
                lay = net.layers[_unit_layer(net, kind, layer)]
                size = lay.n_out if kind == "neuron" else lay.n_out * lay.n_in
                for i in cols:
                    check_index(i, f"{kind} index in {kind} layer {layer}", size)
                mask = torch.zeros(M, size, dtype=torch.bool)
                sent = torch.zeros(M, size, dtype=x.dtype)
                r, c = torch.tensor(rows), torch.tensor(cols)
                mask[r, c] = True
                sent[r, c] = torch.tensor(vals, dtype=x.dtype)
                if kind == "neuron":
                    nm[layer], nv[layer] = mask, sent
                else:
                    sm[layer] = mask.reshape(M, *lay.weight.shape)
                    sv[layer] = sent.reshape(M, *lay.weight.shape)
            y = net.forward(x, nm, nv, sm, sv)
            if y.dim() == 2:  # no fault in this block
                y = y.unsqueeze(0).expand(M, *y.shape)
            err = output_error(y, y_ref)
            out.append(err.amax(dim=-1) if reduce == "max" else err.mean(dim=-1))
    return torch.cat(out) if out else torch.zeros(0)


def _all_configs(groups: list[tuple[str, int, int, int, list[float]]]) -> Iterator[list[Unit]]:
    per_group = []
    for kind, layer, count, n, values in groups:
        opts = []
        for subset in itertools.combinations(range(n), count):
            for vals in itertools.product(values, repeat=count):
                opts.append([(kind, layer, i, v) for i, v in zip(subset, vals, strict=True)])
        per_group.append(opts)
    for combo in itertools.product(*per_group):
        yield [u for part in combo for u in part]


def _n_configs(groups: list[tuple[str, int, int, int, list[float]]]) -> int:
    total = 1
    for _, _, count, n, values in groups:
        total *= math.comb(n, count) * len(values) ** count
    return total


def worst_case_search(
    net: Network,
    x: torch.Tensor,
    neurons: Sequence[int] | None = None,
    synapses: Sequence[int] | None = None,
    mode: FaultMode = "crash",
    byzantine_bound: float | None = None,
    exhaustive_limit: int = 20000,
    restarts: int = 3,
    max_rounds: int = 20,
    seed: int = 0,
) -> WorstCase:
    """Adversarial search for the failures that maximise max_{x in batch} ‖ỹ(x) − y(x)‖∞.

    Failed neurons/synapses are chosen per layer (exactly ``neurons[l]`` and ``synapses[k]``);
    Byzantine units send an endpoint of their allowed interval (the extreme points, where a
    last-hidden-layer fault's effect, linear in the value, is largest). Exhaustive enumeration when
    the number of configurations is at most ``exhaustive_limit``; otherwise greedy (add the unit
    that increases the error most) followed by best-improvement swaps, from the greedy start and
    ``restarts`` random starts. Returns a lower bound on the worst case, to compare with
    :func:`byzlearn.neurons.fep.fep_bound` (*When Neurons Fail*, IPDPS 2017).
    """
    x = _check_x(net, x)
    groups = _groups(net, neurons, synapses, mode, byzantine_bound)
    if not groups:
        return WorstCase(0.0, [], "none", 0)
    with torch.no_grad():
        y_ref = net.forward(x)
    total = _n_configs(groups)
    if total <= exhaustive_limit:
        configs = list(_all_configs(groups))
        errs = evaluate_configs(net, x, configs, "max", y_ref)
        top = int(errs.argmax())
        return WorstCase(float(errs[top]), configs[top], "exhaustive", len(configs))

    g = torch.Generator().manual_seed(seed)
    evaluated = 0

    def score(cands: list[list[Unit]]) -> torch.Tensor:
        nonlocal evaluated
        evaluated += len(cands)
        return evaluate_configs(net, x, cands, "max", y_ref)

    def local_search(state: list[Unit], current: float) -> tuple[list[Unit], float]:
        for _ in range(max_rounds):
            cands = []
            for pos, (kind, layer, idx, value) in enumerate(state):
                _, _, _, n, values = next(gr for gr in groups if gr[0] == kind and gr[1] == layer)
                taken = {u[2] for u in state if u[0] == kind and u[1] == layer}
                for j in range(n):
                    if j in taken and j != idx:
                        continue
                    for v in values:
                        if j == idx and v == value:
                            continue
                        new = list(state)
                        new[pos] = (kind, layer, j, v)
                        cands.append(new)
            if not cands:
                break
            errs = score(cands)
            b = int(errs.argmax())
            if float(errs[b]) <= current * (1 + 1e-9) + 1e-12:
                break
            state, current = cands[b], float(errs[b])
        return state, current

    # greedy construction
    state: list[Unit] = []
    while True:
        cands = []
        for kind, layer, count, n, values in groups:
            taken = {u[2] for u in state if u[0] == kind and u[1] == layer}
            if len(taken) >= count:
                continue
            for j in range(n):
                if j not in taken:
                    cands.extend([[*state, (kind, layer, j, v)] for v in values])
        if not cands:
            break
        errs = score(cands)
        state = cands[int(errs.argmax())]
    current = float(score([state])[0])
    best_state, best = local_search(state, current)
    for _ in range(restarts):
        start: list[Unit] = []
        for kind, layer, count, n, values in groups:
            idx = torch.randperm(n, generator=g)[:count].tolist()
            vi = torch.randint(0, len(values), (count,), generator=g).tolist()
            start.extend((kind, layer, i, values[v]) for i, v in zip(idx, vi, strict=True))
        st, cur = local_search(start, float(score([start])[0]))
        if cur > best:
            best_state, best = st, cur
    return WorstCase(best, best_state, "greedy+local", evaluated)


def random_faults(
    net: Network,
    x: torch.Tensor,
    neurons: Sequence[int] | None = None,
    synapses: Sequence[int] | None = None,
    mode: FaultMode = "crash",
    byzantine_bound: float | None = None,
    reps: int = 200,
    reduce: Literal["mean", "max"] = "mean",
    level: float = 0.95,
    ci: Literal["normal", "bootstrap"] = "normal",
    seed: int = 0,
) -> InjectionStats:
    """Random failures of fixed counts, repeated ``reps`` times.

    In each repetition, ``neurons[l]`` neurons of hidden layer l and ``synapses[k]`` synapses of
    Linear k, chosen uniformly without replacement, fail: crash (send 0) or Byzantine (send a
    value uniform in the allowed interval, the same for every input). The repetition's error is
    the mean (``reduce="mean"``) or max over the batch of ‖ỹ − y‖∞. Returns the samples, their
    mean and a ``level`` confidence interval (normal or percentile bootstrap).
    """
    reps = check_int(reps, "reps", 1)
    check_choice(reduce, "reduce", ("mean", "max"))
    x = _check_x(net, x)
    groups = _groups(net, neurons, synapses, mode, byzantine_bound)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        y_ref = net.forward(x)
        errs = []
        max_err = 0.0
        chunk = max(1, min(reps, 4096 // max(1, x.shape[0]) + 1))
        done = 0
        while done < reps:
            M = min(chunk, reps - done)
            nm, nv, sm, sv = {}, {}, {}, {}
            for kind, layer, count, n, values in groups:
                order = torch.rand(M, n, generator=g).argsort(dim=1)[:, :count]
                mask = torch.zeros(M, n, dtype=torch.bool).scatter_(1, order, True)
                lo, hi = min(values), max(values)
                vals = lo + (hi - lo) * torch.rand(M, n, generator=g, dtype=x.dtype)
                if kind == "neuron":
                    nm[layer], nv[layer] = mask, vals
                else:
                    shape = (M, *net.layers[layer].weight.shape)
                    sm[layer], sv[layer] = mask.reshape(shape), vals.reshape(shape)
            y = net.forward(x, nm, nv, sm, sv)
            if y.dim() == 2:
                y = y.unsqueeze(0).expand(M, *y.shape)
            e = output_error(y, y_ref)
            max_err = max(max_err, float(e.max()))
            errs.append(e.mean(dim=1) if reduce == "mean" else e.amax(dim=1))
            done += M
    samples = torch.cat(errs)
    low, high = confidence_interval(samples, level, ci, seed)
    return InjectionStats(samples, float(samples.mean()), low, high, max_err, level, ci)


def _module_by_name(model: nn.Module, name: str) -> nn.Module:
    if name == "<root>":
        return model
    mods = dict(model.named_modules())
    if name not in mods:
        raise KeyError(f"module {name!r} not found in the model")
    return mods[name]


@contextmanager
def module_faults(
    model: nn.Module,
    net: Network,
    neurons: Mapping[int, Sequence[int]],
    values: Mapping[int, float | Sequence[float]] | None = None,
) -> Iterator[nn.Module]:
    """Inject neuron faults into the real ``model`` with forward hooks, inside a ``with`` block.

    ``neurons`` maps a hidden layer (0-based) to the indices of its failed neurons; ``values``
    gives what they send (absent: 0, a crash; a float or one value per failed neuron: Byzantine).
    ``net`` must come from :func:`extract_network` on the same ``model`` (it names the module
    whose output is each hidden layer). The hooks are removed on exit.
    """
    values = values or {}
    handles = []
    try:
        for layer, idx in neurons.items():
            lay = net.layers[net.check_hidden(layer)]
            mod = _module_by_name(model, lay.out_name)
            name = f"neuron index of hidden layer {layer}"
            checked = [check_index(i, name, lay.n_out) for i in idx]
            index = torch.as_tensor(checked, dtype=torch.long)
            val = values.get(layer, 0.0)

            def hook(
                _m: nn.Module,
                _inp: object,
                out: torch.Tensor,
                index: torch.Tensor = index,
                val: float | Sequence[float] = val,
            ) -> torch.Tensor:
                out = out.clone()
                flat = out.view(out.shape[0], -1)  # conv outputs: neurons in flattened order
                flat[:, index] = torch.as_tensor(val, dtype=out.dtype)
                return out

            handles.append(mod.register_forward_hook(hook))
        yield model
    finally:
        for h in handles:
            h.remove()


def with_crashed_synapses(
    model: nn.Module, net: Network, synapses: Mapping[int, Sequence[tuple[int, int]]]
) -> nn.Module:
    """A deep copy of ``model`` in which the synapses {Linear index: [(i, j), ...]} are crashed.

    A crashed synapse j → i transmits 0, i.e. its weight W[i, j] is zeroed. (Byzantine synapses
    depend on the value carried; use :meth:`Network.forward` with ``synapse_values``.)
    """
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for k, pairs in synapses.items():
            if not 0 <= k < len(net.layers):
                raise ValueError(f"Linear index must be in [0, {len(net.layers) - 1}], got {k}")
            lin = _module_by_name(clone, net.layers[k].name)
            if not isinstance(lin, nn.Linear):
                raise ValueError(
                    f"layer {net.layers[k].name!r} is a {type(lin).__name__}: its weights are "
                    "shared, use Network.forward(..., synapse_masks=...) instead"
                )
            for i, j in pairs:
                i = check_index(i, f"synapse row i of Linear {k}", lin.out_features)
                j = check_index(j, f"synapse column j of Linear {k}", lin.in_features)
                lin.weight[i, j] = 0.0
    return clone
