"""A Flower strategy (message API, ``flwr.serverapp.strategy``) that aggregates with byzlearn.

One training round of :class:`RobustStrategy`, given the model ``w_t`` it sent:

1. read the replies: error replies are *failed*; replies with no ArrayRecord, a missing or extra
   tensor, another shape or a non-numeric dtype are *rejected* (logged with the reason, never
   aggregated); the others give the update ``u_i = w_i - w_t`` of every floating-point tensor,
   flattened once into row i of an (n, d) matrix (non-floating tensors such as counters are kept
   as sent). NaN/Inf inside a well-formed reply are *missing* values: the rule's documented
   policy handles them (``docs/aggregators.md``);
2. if n is below what the rule needs with the declared f, apply ``on_shortfall``: ``"shrink"``
   (default) runs with the largest f' <= f the rule allows on n inputs
   (:func:`byzlearn.aggregators.largest_f`), ``"skip"`` keeps the model for this round; a
   round the rule cannot aggregate (no usable reply, too many missing values) is skipped too;
3. ``a_t = rule(u_1..u_n, f)`` by one call of :func:`byzlearn.aggregators.aggregate` (output and
   kept rows); randomised rules get a generator keyed on (seed, round); centred clipping is
   centred on the previous round's aggregate ``a_{t-1}`` (Karimireddy, He, Jaggi, ICML 2021);
4. server momentum ``m_t = beta m_{t-1} + a_t`` (``m_t = a_t`` for beta = 0) and
   ``w_{t+1} = w_t + eta m_t`` (eta = ``server_lr``; eta = 1, beta = 0 puts the aggregate update
   itself on the model, as FedAvg does).

**Weights.** ``weighting="uniform"`` (default): every usable reply counts once whatever its
``num-examples``; the robustness guarantees of the rules are stated for unweighted inputs, and a
client's example count is its own unverifiable claim (a Byzantine client would claim 10^9).
``weighting="examples"``: the weights ``num-examples / sum`` go to the rule as its ``weights``
option (rules that take one: ``geometric_median``); a reply without a positive finite count is
rejected.

The per-round report goes into Flower's train MetricRecord (see :data:`METRIC_KEYS`) and, in full
(node ids, reasons, the aggregate), into ``strategy.reports``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, Literal

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

import byzlearn.aggregators as agg
from byzlearn.integrations.flower._updates import Layout, Parsed, Rejected, read_replies

__all__ = ["BYZANTINE_KEY", "METRIC_KEYS", "RobustStrategy", "RoundReport"]

OnShortfall = Literal["shrink", "skip"]
Weighting = Literal["uniform", "examples"]

#: Name of the ConfigRecord that a simulated Byzantine client adds to its reply (read only when
#: the strategy runs with ``simulation=True``, for reporting; never used to aggregate).
BYZANTINE_KEY = "byzlearn-byzantine"

#: Keys of the train MetricRecord of every round (plus the mean over the kept replies of the
#: scalar metrics they all report, e.g. ``train_loss``).
METRIC_KEYS = {
    "received": "replies with content",
    "failed": "error replies (the client raised, crashed or omitted its reply)",
    "rejected": "malformed replies left out (reasons in strategy.reports and the log)",
    "aggregated": "replies given to the rule",
    "f": "f the rule ran with (-1 when the round was skipped)",
    "kept": "replies the rule kept (selection rules; all aggregated ones otherwise)",
    "kept-nodes": "node ids of the kept replies",
    "skipped": "1 when the round left the model unchanged",
    "byzantine": "simulation only: Byzantine replies aggregated",
    "byzantine-kept": "simulation only: Byzantine replies kept",
}


@dataclass
class RoundReport:
    """What one training round did (``strategy.reports[t - 1]``)."""

    round: int
    received: int
    failed: list[Rejected]
    rejected: list[Rejected]
    aggregated: list[int]  # node ids, in row order
    f: int | None = None
    kept: list[int] = field(default_factory=list)
    byzantine: list[int] | None = None  # simulation: aggregated Byzantine node ids
    skipped: str | None = None  # why the model was left unchanged
    aggregate: torch.Tensor | None = None  # a_t, the flat aggregate update

    @property
    def byzantine_kept(self) -> int | None:
        """Simulation only: how many kept replies were Byzantine."""
        if self.byzantine is None:
            return None
        return len(set(self.byzantine) & set(self.kept))


def fewest_inputs(rule: str, f: int, options: dict[str, Any], limit: int = 100_000) -> int:
    """Fewest inputs ``rule`` runs on with ``f`` Byzantine ones (TypeError: unknown option).

    A rule that runs on n inputs runs on more, so a doubling then a bisection finds it in
    O(log n) checks (a scan took minutes for a large f)."""

    high = 1
    while not _runs(rule, high, f, options):
        if high >= limit:
            try:
                agg.check(rule, limit, f, **options)
            except ValueError as err:
                raise ValueError(f"{rule} cannot run with f={f} on {limit} inputs: {err}") from None
        high = min(2 * high, limit)
    low = high // 2  # does not run (or 0)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if _runs(rule, middle, f, options) else (middle, high)
    return high


def _runs(rule: str, n: int, f: int, options: dict[str, Any]) -> bool:
    try:
        agg.check(rule, n, f, **options)
    except ValueError:
        return False
    return True


def _dry_run(rule: str, f: int, n: int, options: dict[str, Any]) -> None:
    """Run the rule once on n random 2-d inputs so that a missing or invalid option raises when
    the strategy is built, not in a round (generators given in the options are restored)."""
    generators = [
        v
        for value in options.values()
        for v in (value.values() if isinstance(value, dict) else [value])
        if isinstance(v, torch.Generator)
    ]
    states = [g.get_state() for g in generators]
    try:
        agg.aggregate(
            rule,
            torch.randn(n, 2, generator=torch.Generator().manual_seed(0)),
            f=f,
            **agg.call_options(rule, options, key=(0, "dry-run")),
        )
    except ValueError as err:
        shaped = any(isinstance(v, (torch.Tensor, list, tuple)) for v in options.values())
        if not shaped:  # options sized for the model (center, weights) cannot be tried here
            raise ValueError(f"rule_options do not run with {rule}: {err}") from None
    finally:
        for g, state in zip(generators, states, strict=True):
            g.set_state(state)


class RobustStrategy(FedAvg):
    """Flower strategy aggregating client updates with a byzlearn rule (module docstring).

    Parameters
    ----------
    rule : a byzlearn rule or composition (``"krum"``, ``"nnm+krum"``, ``"bucketing+median"``).
    f : the declared number of Byzantine clients among the replies of a round.
    rule_options : options of the rule (``agg.get(rule)`` documents them).
    on_shortfall : ``"shrink"`` or ``"skip"`` when fewer replies than the rule needs arrive.
    server_lr, server_momentum : eta and beta of step 4.
    weighting : ``"uniform"`` or ``"examples"`` (see the module docstring).
    seed : keys the generator of randomised rules (bucketing, DnC, SignGuard) per round.
    simulation : report how many Byzantine replies were aggregated and kept, from the
        :data:`BYZANTINE_KEY` record that simulated Byzantine clients add.
    **fedavg_options : Flower's FedAvg options (``fraction_train``, ``min_train_nodes``,
        ``min_available_nodes``, ...), with Flower's defaults: the server waits for
        ``min_available_nodes`` nodes before a round, so raising it to ``strategy.needed`` waits
        for enough nodes instead of shrinking f (a grid that never has that many waits forever).
    """

    def __init__(
        self,
        rule: str = "krum",
        f: int = 0,
        *,
        rule_options: dict[str, Any] | None = None,
        on_shortfall: OnShortfall = "shrink",
        server_lr: float = 1.0,
        server_momentum: float = 0.0,
        weighting: Weighting = "uniform",
        seed: int = 0,
        simulation: bool = False,
        **fedavg_options: Any,
    ) -> None:
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise ValueError(f"f must be a non-negative int, got {f!r}")
        for name, value in (("server_lr", server_lr), ("server_momentum", server_momentum)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if isinstance(seed, bool) or not hasattr(seed, "__index__"):  # int, numpy ints
            raise ValueError(f"seed must be an int, got {seed!r}")
        if not isinstance(simulation, bool):
            raise ValueError(f"simulation must be True or False, got {simulation!r}")
        if rule_options is not None and not isinstance(rule_options, dict):
            raise ValueError(f"rule_options must be a dict, got {rule_options!r}")
        if on_shortfall not in ("shrink", "skip"):
            raise ValueError(f"on_shortfall must be 'shrink' or 'skip', got {on_shortfall!r}")
        if weighting not in ("uniform", "examples"):
            raise ValueError(f"weighting must be 'uniform' or 'examples', got {weighting!r}")
        if not 0.0 <= server_momentum < 1.0:
            raise ValueError(f"server_momentum must be in [0, 1), got {server_momentum!r}")
        if not (math.isfinite(server_lr) and server_lr > 0):
            raise ValueError(f"server_lr must be a positive number, got {server_lr!r}")
        options = dict(rule_options or {})
        if weighting == "examples":
            if not agg.accepts(rule, "weights") or "bucketing" in rule.split("+"):
                raise ValueError(
                    f"weighting='examples' needs a rule that takes weights per input "
                    f"(geometric_median), got {rule!r}"
                )
            if "weights" in options:
                raise ValueError(
                    "weighting='examples' sets the weights; drop rule_options['weights']"
                )
        self.needed = fewest_inputs(rule, f, options)  # checks the rule and its options
        _dry_run(rule, f, self.needed, options)  # required options, option values
        super().__init__(**fedavg_options)
        self.rule = rule
        self.f = f
        self.rule_options = options
        self.on_shortfall = on_shortfall
        self.server_lr = float(server_lr)
        self.server_momentum = float(server_momentum)
        self.weighting = weighting
        self.seed = int(seed)
        self.simulation = bool(simulation)
        self.layout: Layout | None = None  # of the model sent this round
        self.previous: torch.Tensor | None = None  # a_{t-1}, the previous aggregate
        self.momentum: torch.Tensor | None = None  # m_{t-1}
        self.reports: list[RoundReport] = []

    def summary(self) -> None:
        """Log the byzlearn settings, then FedAvg's."""
        log(
            INFO,
            "\t├──> byzlearn: rule %s, f=%d (needs %d replies)",
            self.rule,
            self.f,
            self.needed,
        )
        log(
            INFO,
            "\t│\t└── shortfall %s, weighting %s, server lr %g, momentum %g",
            self.on_shortfall,
            self.weighting,
            self.server_lr,
            self.server_momentum,
        )
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the model sent (updates are taken against it), then FedAvg's sampling."""
        self.layout = Layout.of(arrays)
        available = len(list(grid.get_node_ids()))
        # FedAvg asks max(int(available * fraction_train), min_train_nodes) nodes, of those
        # available (after waiting for min_available_nodes)
        asked = max(int(available * self.fraction_train), self.min_train_nodes)
        reachable = max(available, self.min_available_nodes)
        if min(asked, reachable) < self.needed and self.fraction_train > 0:
            log(
                WARNING,
                "%d nodes available, %s needs %d replies with f=%d: on_shortfall=%s applies",
                available,
                self.rule,
                self.needed,
                self.f,
                self.on_shortfall,
            )
        return super().configure_train(server_round, arrays, config, grid)

    # ------------------------------------------------------------------ aggregation
    def _rule_options(self, server_round: int, weights: list[float]) -> dict[str, Any]:
        options = agg.call_options(
            self.rule,
            self.rule_options,
            centre=self.previous,
            key=(self.seed, "rule", server_round),
        )
        if self.weighting == "examples":
            w = torch.tensor(weights, dtype=torch.float64)
            w = w / w.max()  # counts near the float maximum would overflow the sum
            options["weights"] = w / w.sum()
        return options

    def _usable_weights(self, parsed: Parsed) -> Parsed:
        """weighting='examples': reject replies without a positive finite example count."""
        if self.weighting != "examples":
            return parsed
        good = [i for i, w in enumerate(parsed.weights) if math.isfinite(w) and w > 0]
        for i in sorted(set(range(len(parsed.nodes))) - set(good)):
            parsed.rejected.append(
                Rejected(parsed.nodes[i], f"{self.weighted_by_key!r} missing or not positive")
            )
        return Parsed(
            parsed.updates[good],
            [parsed.nodes[i] for i in good],
            [parsed.weights[i] for i in good],
            [parsed.messages[i] for i in good],
            parsed.rejected,
            parsed.failed,
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the round's updates with the rule (module docstring); never raises on
        what clients send."""
        if self.layout is None:
            raise RuntimeError("aggregate_train called before configure_train sent a model")
        replies = list(replies)
        parsed = self._usable_weights(
            read_replies(
                replies,
                self.layout,
                arrays_key=self.arrayrecord_key,
                weight_key=self.weighted_by_key,
            )
        )
        report = RoundReport(
            round=server_round,
            received=sum(1 for m in replies if m.has_content()),
            failed=parsed.failed,
            rejected=parsed.rejected,
            aggregated=list(parsed.nodes),
        )
        if self.simulation:
            report.byzantine = [
                node for node, m in zip(parsed.nodes, parsed.messages, strict=True) if _marked(m)
            ]
        for bad in parsed.rejected:
            log(
                WARNING,
                "round %d: reply of node %d rejected: %s",
                server_round,
                bad.node,
                bad.reason,
            )
        arrays = self._aggregate(server_round, parsed, report)
        self.reports.append(report)
        if report.skipped is not None:
            log(WARNING, "round %d skipped: %s", server_round, report.skipped)
        else:
            log(
                INFO,
                "aggregate_train: %d replies, %d failed, %d rejected; %s with f=%s kept %d",
                report.received,
                len(report.failed),
                len(report.rejected),
                self.rule,
                report.f,
                len(report.kept),
            )
        return arrays, self._metrics(report, parsed)

    def _aggregate(self, t: int, parsed: Parsed, report: RoundReport) -> ArrayRecord | None:
        assert self.layout is not None
        n = len(parsed.nodes)
        f = self.f
        if n < self.needed:
            shortfall = f"{n} usable replies, {self.rule} needs {self.needed} with f={self.f}"
            shrunk = agg.largest_f(self.rule, n, self.f, **self.rule_options) if n else None
            if self.on_shortfall == "skip" or shrunk is None:
                report.skipped = shortfall
                return None
            f = shrunk
            log(WARNING, "round %d: %s; aggregating with f=%d", t, shortfall, f)
        try:
            result = agg.aggregate(
                self.rule, parsed.updates, f=f, **self._rule_options(t, parsed.weights)
            )
        except ValueError as err:  # e.g. too many missing values to aggregate
            report.skipped = f"{self.rule} could not aggregate: {err}"
            return None
        out = result.vector
        if not bool(torch.isfinite(out).all()):
            report.skipped = f"{self.rule} returned non-finite values"
            return None
        step = out if self.momentum is None else self.server_momentum * self.momentum + out
        weights = self.layout.sent + self.server_lr * step
        if not bool(torch.isfinite(weights).all()):  # a finite aggregate, a huge server_lr
            report.skipped = f"the new weights w + {self.server_lr:g} m are not finite"
            return None
        report.f = f
        rows = range(n) if result.kept is None else result.kept.tolist()
        report.kept = [parsed.nodes[i] for i in rows]
        report.aggregate = out
        self.previous = out.clone()
        if self.server_momentum > 0:
            self.momentum = step
        return self.layout.to_arrays(weights)

    def _metrics(self, report: RoundReport, parsed: Parsed) -> MetricRecord:
        metrics: dict[str, Any] = {
            "received": report.received,
            "failed": len(report.failed),
            "rejected": len(report.rejected),
            "aggregated": len(report.aggregated),
            "f": -1 if report.f is None else report.f,
            "kept": len(report.kept),
            "kept-nodes": list(report.kept),
            "skipped": int(report.skipped is not None),
        }
        if report.byzantine is not None:
            metrics["byzantine"] = len(report.byzantine)
            metrics["byzantine-kept"] = report.byzantine_kept
        kept = set(report.kept)
        records = [
            r
            for node, m in zip(parsed.nodes, parsed.messages, strict=True)
            if node in kept
            for r in m.content.metric_records.values()
        ]
        skip = {self.weighted_by_key, *metrics}
        common = set.intersection(*(set(r) for r in records)) - skip if records else set()
        for key in sorted(common):
            values = [r[key] for r in records]
            if all(isinstance(v, (int, float)) for v in values):
                finite = [float(v) for v in values if math.isfinite(float(v))]  # type: ignore[arg-type]
                if finite:
                    metrics[key] = sum(finite) / len(finite)
        return MetricRecord(metrics)


def _marked(message: Message) -> bool:
    return BYZANTINE_KEY in message.content.config_records
