"""The experiment config: a pydantic schema, YAML loading and ``key=value`` overrides.

Every field has a default, unknown keys are errors, and every error names the field (dotted
path), e.g. ``rule.name: unknown rule 'krumm' (known: ...)``. See ``docs/training.md`` for the
field reference.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from byzlearn.engines import ENGINES
from byzlearn.machine import available_bytes
from byzlearn.protocols import (
    PROTOCOLS,
    AsyncSGDOptions,
    ByzSGDOptions,
    DecentralizedOptions,
    KardamOptions,
    LiuBeiOptions,
    ParameterServerOptions,
)
from byzlearn.protocols.base import STRICT_OPTIONS
from byzlearn.registry import Registry

__all__ = [
    "AttackConfig",
    "Config",
    "ConfigError",
    "DatasetConfig",
    "DelayConfig",
    "LocalEngineConfig",
    "ModelConfig",
    "NetworkConfig",
    "OptimizerConfig",
    "PartitionConfig",
    "PoisoningConfig",
    "RayEngineConfig",
    "RuleConfig",
    "apply_overrides",
    "check_round_memory",
    "config_hash",
    "field_path_exists",
    "load_config",
    "parse_config",
    "read_yaml",
    "round_memory",
]


class ConfigError(ValueError):
    """An invalid config; the message lists ``field.path: problem`` lines."""


class _Strict(BaseModel):
    # strict: no silent coercion (``n: true`` or ``lr: "0.1"`` are errors, not 1 and 0.1);
    # allow_inf_nan=False: ``lr: .inf`` is an error, not a run that "diverges" at round 1
    model_config = STRICT_OPTIONS


class DatasetConfig(_Strict):
    """Which data: ``digits`` (bundled), ``synthetic``, ``mnist``, ``fashion_mnist``, ``cifar10``,
    ``cifar100``. ``options`` go to the loader (synthetic: num_samples, num_features, num_classes,
    separation)."""

    name: str = "digits"
    root: str = "data"
    download: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from byzlearn.data import names

        if v not in names():
            raise ValueError(f"unknown dataset {v!r} (known: {', '.join(names())})")
        return v

    @model_validator(mode="after")
    def _options(self) -> DatasetConfig:
        from byzlearn.data import loader_options

        _check_option_names(self.name, self.options, loader_options(self.name))
        _check_loader_types(self.name, self.options)
        return self


def _check_loader_types(name: str, options: dict[str, Any]) -> None:
    """Each dataset option has its loader's type (``int``, ``float``, ``str``, ``bool``) with
    no coercion (``seed: 1.5`` or ``seed: true`` are errors, not 1), and a ``seed`` is a
    32-bit seed as the config's own."""
    from byzlearn.data import loader_types

    hints = loader_types(name)
    for key, value in options.items():
        kind = hints.get(key)
        if kind is int and type(value) is not int:
            raise ValueError(f"options.{key}: an integer, got {value!r}")
        if kind is float and (type(value) not in (int, float) or not math.isfinite(value)):
            raise ValueError(f"options.{key}: a finite number, got {value!r}")
        if kind is str and type(value) is not str:
            raise ValueError(f"options.{key}: a string, got {value!r}")
        if kind is bool and type(value) is not bool:
            raise ValueError(f"options.{key}: true or false, got {value!r}")
        if key == "seed" and kind is int and not 0 <= value < 2**32:
            raise ValueError(f"options.seed: 0 to 2^32 - 1, got {value}")


class PartitionConfig(_Strict):
    """How the training set is dealt to the workers (heterogeneity): disjoint parts (``iid``,
    ``dirichlet``, ``shards``, ``gamma``) or ``full`` (every worker samples, with replacement,
    from the whole training set: the Krum, Bulyan and momentum papers' setting). ``among``:
    ``all`` workers get a part (Byzantine ones included), or only the ``honest`` ones (the
    heterogeneity papers); Byzantine workers that compute (data poisoning, or no attack) then
    sample from the whole training set."""

    kind: Literal["iid", "dirichlet", "shards", "gamma", "full"] = "iid"
    among: Literal["all", "honest"] = "all"
    alpha: float = Field(1.0, gt=0, description="Dirichlet concentration (small = skewed)")
    shards_per_worker: int = Field(2, ge=1)
    gamma: float = Field(0.5, ge=0, le=1, description="fraction dealt iid (1 = iid)")

    def label(self) -> str:
        """Short description, e.g. ``dirichlet(0.1)``."""
        arg = {"dirichlet": self.alpha, "shards": self.shards_per_worker, "gamma": self.gamma}
        text = f"{self.kind}({arg[self.kind]:g})" if self.kind in arg else self.kind
        return text + ("/honest" if self.among == "honest" else "")


class ModelConfig(_Strict):
    """A reference model by name; ``options`` go to its constructor (mlp: hidden; cnn: channels;
    resnet: depth, width, groups)."""

    name: str = "mlp"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from byzlearn.models import names

        if v not in names():
            raise ValueError(f"unknown model {v!r} (known: {', '.join(names())})")
        return v


class AttackConfig(_Strict):
    """What the Byzantine workers send: ``none`` (they behave honestly) or an attack of
    :mod:`byzlearn.attacks`, with its options. An attack with a running state (its spec's
    ``running_state``: ``mimic``'s ``warmup``) also takes that state's options; the coalition
    then keeps the state across rounds."""

    name: str = "none"
    options: dict[str, Any] = Field(default_factory=dict)
    identical: bool | None = None

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v == "none":
            return v
        import byzlearn.attacks as atk

        if v not in atk.names() and v not in atk.aliases():
            raise ValueError(f"unknown attack {v!r} (known: none, {', '.join(atk.names())})")
        return v

    @model_validator(mode="after")
    def _options(self) -> AttackConfig:
        if self.name == "none":
            if self.options:
                raise ValueError("options: attack 'none' takes no options")
            return self
        import byzlearn.attacks as atk

        _check_option_names(self.name, self.options, atk.spec(self.name).config_options)
        return self


class PoisoningConfig(_Strict):
    """Data poisoning: Byzantine workers compute honestly on poisoned labels."""

    kind: Literal["none", "flip_labels", "targeted_flip"] = "none"
    mapping: list[int] | None = None
    source: int = 0
    target: int = 1


class DelayConfig(_Strict):
    """A distribution of durations given by its mean (simulated seconds): ``constant``,
    ``exponential``, ``lognormal`` (``sigma``: std of the log) or ``pareto`` (heavy-tailed
    stragglers; tail index ``shape`` > 1)."""

    dist: Literal["constant", "exponential", "lognormal", "pareto"] = "constant"
    mean: float = Field(1.0, ge=0, allow_inf_nan=False)
    sigma: float = Field(1.0, gt=0, allow_inf_nan=False)
    shape: float = Field(2.5, gt=1, allow_inf_nan=False)


def _as_delay(value: Any) -> Any:
    """A bare number is a constant duration."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"dist": "constant", "mean": value}
    return value


class NetworkConfig(_Strict):
    """The simulated network and nodes of the ``local`` engine (time in simulated seconds).

    Each node handles a message in ``compute_time`` (a number or a distribution), ``stragglers``
    honest workers (chosen under the seed) ``slowdown`` times longer; messages arrive
    ``link_delay`` later; each coordinate of a gradient is lost (arrives as NaN) with
    probability ``coordinate_drop``; each honest reply is lost with probability ``omission``;
    ``crashes`` maps a worker index to the round (step) from which it is silent. Every draw is
    keyed on (seed, node, round).
    """

    compute_time: DelayConfig = Field(default_factory=DelayConfig)
    stragglers: int = Field(0, ge=0)
    slowdown: float = Field(5.0, ge=1, allow_inf_nan=False)
    link_delay: DelayConfig = Field(default_factory=lambda: DelayConfig(mean=0.0))
    coordinate_drop: float = Field(0.0, ge=0, lt=1)
    omission: float = Field(0.0, ge=0, le=1)
    crashes: dict[int, int] = Field(default_factory=dict)

    @field_validator("compute_time", "link_delay", mode="before")
    @classmethod
    def _number_is_constant(cls, v: Any) -> Any:
        return _as_delay(v)

    @field_validator("crashes", mode="before")
    @classmethod
    def _integer_keys(cls, v: Any) -> Any:
        """Worker indices written as strings (JSON keys) are integers."""
        if isinstance(v, dict):
            return {int(k) if isinstance(k, str) and k.isdigit() else k: r for k, r in v.items()}
        return v

    @field_validator("crashes")
    @classmethod
    def _crash_rounds(cls, v: dict[int, int]) -> dict[int, int]:
        bad = sorted((i, r) for i, r in v.items() if r < 0)
        if bad:
            raise ValueError(f"a crash round must be >= 0, got {bad[0][1]} for worker {bad[0][0]}")
        return v

    @field_validator("compute_time")
    @classmethod
    def _positive_compute(cls, v: DelayConfig) -> DelayConfig:
        if v.mean <= 0:
            raise ValueError("mean: a compute time must be > 0")
        return v


class LocalEngineConfig(_Strict):
    """``engine: {name: local}``: every node in this process, simulated time; ``vectorise``:
    one batched forward/backward for all honest workers (``false``: a per-worker loop)."""

    name: Literal["local"] = "local"
    vectorise: bool = True


class RoleResourcesConfig(_Strict):
    """What one actor of a role reserves on the ``ray`` engine (``cpus`` are also its torch
    threads)."""

    cpus: float = Field(1.0, ge=0, allow_inf_nan=False)
    gpus: float = Field(0.0, ge=0, allow_inf_nan=False)


class RayEngineConfig(_Strict):
    """``engine: {name: ray}``: reactive nodes (workers) in Ray actors, wall-clock time (see
    ``docs/ray.md``). ``address``: none for a local instance (``num_cpus`` CPUs), ``auto`` or
    ``host:port`` for a running cluster; ``actors``: actors per honest group; ``resources``:
    per role; ``adversary_wait``: seconds the coalition waits for the honest answers."""

    name: Literal["ray"] = "ray"
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    actors: int | None = Field(None, ge=1)
    resources: dict[str, RoleResourcesConfig] = Field(default_factory=dict)
    adversary_wait: float | None = Field(None, gt=0, allow_inf_nan=False)

    @field_validator("name")
    @classmethod
    def _installed(cls, v: str) -> str:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ValueError('the ray engine needs the optional extra: pip install -e ".[ray]"')
        return v

    @model_validator(mode="after")
    def _cpus_of_a_local_instance(self) -> RayEngineConfig:
        if self.address is not None and self.num_cpus is not None:  # was ignored silently
            raise ValueError(
                "num_cpus sizes the local instance Ray starts; with an address the cluster's "
                "own CPUs count (leave num_cpus out)"
            )
        return self


EngineConfig = Annotated[LocalEngineConfig | RayEngineConfig, Field(discriminator="name")]

# network options the ray engine cannot honour on real time (it emulates crashes, omissions and
# lost coordinates, which are keyed per node and round)
_SIMULATED_ONLY = ("compute_time", "link_delay", "stragglers", "slowdown")
ProtocolConfig = Annotated[
    ParameterServerOptions
    | AsyncSGDOptions
    | KardamOptions
    | ByzSGDOptions
    | LiuBeiOptions
    | DecentralizedOptions,
    Field(discriminator="name"),
]

# protocols whose servers aggregate with MDA unless the config names a rule (ByzSGD, PODC 2020)
_MDA_BY_DEFAULT = ("byzsgd", "liubei")


class RuleConfig(_Strict):
    """The aggregation rule, its pre-aggregators (applied left to right) and its options."""

    name: str = "average"
    pre: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def full_name(self) -> str:
        """The registry name with pre-aggregators, e.g. ``nnm+krum``."""
        return "+".join([*self.pre, self.name])

    @model_validator(mode="after")
    def _known(self) -> RuleConfig:
        import byzlearn.aggregators as agg

        rules, pre = agg.names("rule"), agg.names("pre")
        *first, last = self.full_name.split("+")  # rule.name may be composed: nnm+krum
        for part in first:
            if part not in pre:
                where = "pre" if part in self.pre else "name"
                what = "a rule, not a pre-aggregator" if part in rules else "unknown"
                raise ValueError(f"{where}: {part!r} is {what} (pre-aggregators: {', '.join(pre)})")
        if last in pre:
            raise ValueError(
                f"name: {last!r} is a pre-aggregator, not a rule: put it in rule.pre "
                f"(rules: {', '.join(rules)})"
            )
        if last not in rules:
            raise ValueError(f"name: unknown rule {last!r} (known: {', '.join(rules)})")
        for key in _RULE_NAMING_OPTIONS:
            if key in self.options and agg.accepts(self.full_name, key):
                _check_rule_named(key, self.options[key], rules, pre)
        return self


# rule options whose value names another rule (Bulyan's ``selection``): checked against the
# registry when the config is read
_RULE_NAMING_OPTIONS = ("selection",)


def _check_rule_named(key: str, value: Any, rules: Sequence[str], pre: Sequence[str]) -> None:
    """Refuse a rule option that should name a registered rule (one, not a composition)."""
    if isinstance(value, str) and value in rules:
        return
    what = "a pre-aggregator, not a rule" if value in pre else "not a rule"
    if not isinstance(value, str):
        what = f"not a rule name (a {type(value).__name__})"
    raise ValueError(f"options.{key}: {value!r} is {what} (rules: {', '.join(rules)})")


class OptimizerConfig(_Strict):
    """Server step size schedule, l2 regularisation, momentum placement and clipping."""

    lr: float = Field(0.1, gt=0)
    schedule: Literal["constant", "step", "cosine", "inverse"] = "constant"
    milestones: list[int] = Field(default_factory=list, description="step schedule: rounds")
    gamma: float = Field(0.1, gt=0, description="step schedule: factor at each milestone")
    decay_steps: float = Field(1000.0, gt=0, description="inverse schedule: lr/(1 + t/decay)")
    weight_decay: float = Field(0.0, ge=0, description="l2 term added to worker gradients")
    momentum: float = Field(0.0, ge=0, lt=1)
    momentum_at: Literal["server", "worker"] = "server"
    dampened: bool = Field(
        False, description="m = mu m + (1 - mu) g instead of heavy ball m = mu m + g"
    )
    clip: float | None = Field(None, gt=0, description="clip honest gradients to this norm")


ByzantineSpec = Literal["first", "last", "random"] | list[int]
_BYZANTINE_CHOICES = ("first", "last", "random")

# caps that keep a config from asking for more memory than any machine has (a MemoryError at
# round 1): local SGD steps per round, server replicas of byzsgd / liubei, and the minibatch
# indices one round draws (n x local_steps x batch_size, drawn for 32 rounds at once)
MAX_LOCAL_STEPS = 10_000
MAX_SERVERS = 1_000
MAX_SAMPLES_PER_ROUND = 10_000_000


class Config(_Strict):
    """One training run. Every field has a default; see ``docs/training.md``."""

    name: str = Field("", description="the run's name (it names its folder under runs/)")
    seed: int = Field(0, ge=0, lt=2**32, description="numpy and scikit-learn take 32-bit seeds")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    n: int = Field(25, ge=1, le=1_000_000, description="number of workers")
    f: int = Field(5, ge=0, description="Byzantine workers tolerated (given to the rule/filter)")
    num_byzantine: int | None = Field(
        None, ge=0, description="workers that actually are Byzantine (default f)"
    )
    byzantine: ByzantineSpec = "random"
    attack: AttackConfig = Field(default_factory=AttackConfig)
    poisoning: PoisoningConfig = Field(default_factory=PoisoningConfig)
    rule: RuleConfig = Field(default_factory=RuleConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    local_steps: int = Field(1, ge=1, le=MAX_LOCAL_STEPS)
    batch_size: int = Field(32, ge=1, le=1_000_000)
    steps: int = Field(300, ge=1, description="protocol steps (rounds, or gradients for async)")
    eval_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(50, ge=0, description="0 = no checkpoints")
    threads: int = Field(1, ge=1, le=1024)
    protocol: ProtocolConfig = Field(default_factory=ParameterServerOptions)
    engine: EngineConfig = Field(default_factory=LocalEngineConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        # the name becomes a folder under runs/: no separator, no leading dot, so it stays there
        if v and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+=,@-]{0,99}", v):
            raise ValueError(
                "a folder name: letters, digits and _ . + = , @ - (a letter, digit or _ first), "
                f"at most 100, got {v!r}"
            )
        return v

    @field_validator("byzantine", mode="before")
    @classmethod
    def _byzantine_spec(cls, v: Any) -> Any:
        """One message for both forms (pydantic would report each member of the union)."""
        if isinstance(v, str) and v in _BYZANTINE_CHOICES:
            return v
        if isinstance(v, list) and all(type(i) is int for i in v):
            return v
        raise ValueError(
            f"expected {', '.join(_BYZANTINE_CHOICES)} or a list of worker ids, got {v!r}"
        )

    @property
    def declared_f(self) -> int:
        """The f given to the rule (and to Kardam's filter)."""
        return self.f

    @property
    def byzantine_count(self) -> int:
        """How many workers are Byzantine (``num_byzantine``, default ``f``)."""
        return self.f if self.num_byzantine is None else self.num_byzantine

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """Configs written before the runtime change: ``q``, ``deadline`` (now under
        ``protocol``), ``vectorise`` and ``engine: local`` (now under ``engine``)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        engine = data.get("engine")
        if isinstance(engine, str):
            data["engine"] = {"name": engine}
        if "vectorise" in data:
            section = dict(data.get("engine") or {})
            section.setdefault("vectorise", data.pop("vectorise"))
            data["engine"] = section
        moved = {k: data.pop(k) for k in ("q", "deadline") if k in data}
        if moved:
            section = dict(data.get("protocol") or {"name": "parameter_server"})
            if section.get("name", "parameter_server") != "parameter_server":
                keys = ", ".join(sorted(moved))
                raise ValueError(f"{keys}: options of parameter_server; write protocol.{keys}")
            for key, value in moved.items():
                section.setdefault(key, value)
            data["protocol"] = section
        for name, default in (("protocol", "parameter_server"), ("engine", "local")):
            if isinstance(data.get(name), dict) and "name" not in data[name]:
                data[name] = {"name": default, **data[name]}  # protocol.q=3 alone
        chosen_protocol = data.get("protocol")
        if isinstance(chosen_protocol, dict) and chosen_protocol.get("name") in _MDA_BY_DEFAULT:
            data.setdefault("rule", {"name": "mda"})
        for key, registry in _TAGGED.items():
            chosen = data.get(key)
            if isinstance(chosen, dict) and "name" in chosen and chosen["name"] not in registry:
                raise ValueError(
                    f"{key}.name: unknown {registry.kind} {chosen['name']!r} "
                    f"(known: {', '.join(registry.names())})"
                )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        _check_finite(self.protocol, "protocol")
        _check_sizes(self)
        if self.f >= self.n:
            raise ValueError(f"f: must be < n (got f={self.f}, n={self.n})")
        count = self.byzantine_count
        if count >= self.n:
            raise ValueError(f"num_byzantine: must be < n (got {count}, n={self.n})")
        if isinstance(self.byzantine, list):
            ids = self.byzantine
            if len(ids) != count or len(set(ids)) != len(ids):
                raise ValueError(f"byzantine: needs {count} distinct worker ids, got {ids}")
            if any(not 0 <= i < self.n for i in ids):
                raise ValueError(f"byzantine: ids must be in [0, {self.n}), got {ids}")
        q = getattr(self.protocol, "q", None)
        if q is not None and q > self.n:
            raise ValueError(f"protocol.q: must be <= n (got q={q}, n={self.n})")
        if self.network.stragglers > self.n - count:
            raise ValueError(
                f"network.stragglers: at most the {self.n - count} honest workers, "
                f"got {self.network.stragglers}"
            )
        bad = sorted(i for i in self.network.crashes if not 0 <= i < self.n)
        if bad:
            raise ValueError(f"network.crashes: worker ids must be in [0, {self.n}), got {bad[0]}")
        if self.engine.name == "ray":
            defaults = NetworkConfig()
            for key in _SIMULATED_ONLY:
                if getattr(self.network, key) != getattr(defaults, key):
                    raise ValueError(
                        f"network.{key}: simulated time only (engine local); the ray engine "
                        "runs on real time"
                    )
        if self.attack.name != "none" and self.poisoning.kind != "none":
            raise ValueError("attack.name: choose an attack or poisoning, not both")
        if self.protocol.name == "kardam" and self.n < 3 * self.f + 1:
            raise ValueError(f"protocol.name: kardam needs n >= 3f + 1, got n={self.n}, f={self.f}")
        engines = getattr(self.protocol, "engines", None)
        if engines is not None and self.engine.name not in engines:
            raise ValueError(
                f"engine.name: {self.protocol.name} runs on the {', '.join(engines)} engine "
                f"only, got {self.engine.name!r}"
            )
        check = getattr(self.protocol, "check_config", None)
        if check is not None:
            check(self.n, self.f)
        import byzlearn.aggregators as agg

        # the rule aggregates at the server of the synchronous protocol (and where a protocol's
        # rule_arity says); asynchronous ones only hand it to rule-aware attacks, so its n/f
        # requirement does not apply there
        arity = getattr(self.protocol, "rule_arity", None)
        n_rule, f_rule = max(self.n, 10), 0
        inputs = ""  # what n_rule counts, when it is not the config's n
        if self.protocol.name == "parameter_server":
            n_rule, f_rule = (q or self.n), self.f
            if q:
                inputs = f" (the {q} gradients the server waits for)"
        elif arity is not None and (given := arity(self.n, self.f)) is not None:
            n_rule, f_rule = given
            inputs = f" (one aggregation of {self.protocol.name} takes {n_rule} inputs)"
        try:
            agg.check(self.rule.full_name, n_rule, f_rule, **self.rule.options)
        except ValueError as exc:
            raise ValueError(f"rule.name: {exc}{inputs}") from None
        except TypeError as exc:
            raise ValueError(f"rule.options: {exc}") from None
        _try_options(self, n_rule, f_rule)
        return self


def _check_finite(model: BaseModel, where: str) -> None:
    """Refuse an infinite or NaN number in a section whose model allows them (a registered
    protocol's options model: ``protocol.deadline: .inf`` would pass its bounds and fail every
    run; the library's own refuse them with ``allow_inf_nan=False``, as every section here)."""
    for key in type(model).model_fields:
        value = getattr(model, key)
        if isinstance(value, BaseModel):
            _check_finite(value, f"{where}.{key}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}.{key}: must be a finite number, got {value}")


def _check_sizes(config: Config) -> None:
    """The caps whose fields live in other modules (the protocols' options) or span fields."""
    servers = getattr(config.protocol, "servers", None)
    if isinstance(servers, int) and servers > MAX_SERVERS:
        raise ValueError(f"protocol.servers: at most {MAX_SERVERS}, got {servers}")
    samples = config.n * config.local_steps * config.batch_size
    if samples > MAX_SAMPLES_PER_ROUND:
        raise ValueError(
            f"batch_size: n x local_steps x batch_size (the samples one round draws) must be at "
            f"most {MAX_SAMPLES_PER_ROUND:,}, got {config.n} x {config.local_steps} x "
            f"{config.batch_size} = {samples:,}"
        )


def _check_poisoning(p: PoisoningConfig, classes: int) -> None:
    """The poisoning's classes exist in the dataset (``classes`` labels, 0 to classes - 1): a
    mapping is checked by ``flip_labels`` itself, on one label per class."""
    if p.kind == "flip_labels" and p.mapping is not None:
        import numpy as np

        import byzlearn.attacks as atk

        try:
            atk.flip_labels(np.arange(classes), classes, p.mapping)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"poisoning.mapping: {_one_line(exc)}") from None
    if p.kind == "targeted_flip":  # targeted_flip does not know the classes: checked here
        for key in ("source", "target"):
            value = getattr(p, key)
            if not 0 <= value < classes:
                raise ValueError(f"poisoning.{key}: a class in 0..{classes - 1}, got {value}")


# the largest forward pass run for real when a config is read (2 samples; beyond, only the
# meta-device pass checks that the model takes the inputs)
_REAL_FORWARD_BYTES = 1 << 28
# (model name, options as JSON, input shape, classes) -> (parameters, activations per sample)
_MODEL_SIZES: dict[tuple, tuple[int, int]] = {}


def _model_sizes(config: Config, shape: Sequence[int], classes: int) -> tuple[int, int]:
    """:func:`byzlearn.models.model_sizes` of the config's model on inputs of ``shape``
    (parameters, activations of one sample; counted on the meta device), remembered per model,
    options and inputs (a sweep's configs share a few)."""
    from byzlearn.models import model_sizes

    name, options = config.model.name, config.model.options
    try:
        key: tuple | None = (name, json.dumps(options, sort_keys=True), tuple(shape), classes)
    except (TypeError, ValueError):  # options that are not plain data: not remembered
        key = None
    if key in _MODEL_SIZES:
        return _MODEL_SIZES[key]
    sizes = model_sizes(name, shape, classes, **options)
    if key is not None:
        if len(_MODEL_SIZES) >= 64:
            _MODEL_SIZES.clear()
        _MODEL_SIZES[key] = sizes
    return sizes


def _inputs_not_taken(config: Config, shape: Sequence[int], exc: BaseException) -> ValueError:
    return ValueError(
        f"model.name: {config.model.name} does not take {config.dataset.name}'s inputs of shape "
        f"{tuple(shape)}: {_one_line(exc)}"
    )


def round_memory(config: Config) -> int:
    """A lower bound of the bytes one round of ``config`` holds at once: the n vectors of d
    values the server gathers, and (the local engine) the activations of the samples whose
    gradients are computed together, kept for the backward pass (every honest worker's batch
    when vectorised, one batch otherwise); float32. The model is built on the meta device
    (nothing allocated)."""
    from byzlearn.data import describe_dataset

    shape, classes = describe_dataset(config.dataset.name, **config.dataset.options)
    d, activations = _model_sizes(config, shape, classes)
    honest = max(config.n - config.byzantine_count, 1)
    at_once = 0
    if config.engine.name == "local":
        at_once = config.batch_size * (honest if config.engine.vectorise else 1)
    return 4 * (config.n * d + at_once * activations)


def check_round_memory(config: Config) -> None:
    """Refuse (one-line ``ValueError``) a run whose rounds cannot fit in the memory available
    now (:func:`round_memory`, a lower bound). Checked where a run starts, not when a config is
    read: a finished run's config stays readable (reports) on a smaller machine."""
    needed, available = round_memory(config), available_bytes()
    if available is not None and needed > available:
        raise ValueError(
            f"memory: a round of this config needs at least {needed / 2**30:.1f} GiB (its n "
            f"gradients, and the activations of the samples computed together), "
            f"{available / 2**30:.1f} GiB available: lower n, batch_size or the model's sizes"
        )


def _try_options(config: Config, n_rule: int, f_rule: int) -> None:
    """Build the model and run the rule and the attack once on tiny random inputs, so that
    option *values* are checked by the objects themselves when the config is parsed (a bad
    value fails here, not at round 1 with a half-written run directory)."""
    import torch

    import byzlearn.aggregators as agg
    from byzlearn.data import describe_dataset
    from byzlearn.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            shape, classes = describe_dataset(config.dataset.name, **config.dataset.options)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"dataset.options: {_one_line(exc)}") from None
        try:
            model = build_model(config.model.name, shape, classes, **config.model.options)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ValueError(f"model.options: {_one_line(exc)}") from None
        # a model that does not take the dataset's inputs fails here: first on the meta device
        # (shapes only, nothing allocated: it counts the activations), then for real, once the
        # round is known to fit in the memory
        try:
            _, activations = _model_sizes(config, shape, classes)
            if 2 * 4 * activations <= _REAL_FORWARD_BYTES:
                with torch.no_grad():
                    model.eval()(torch.zeros(2, *shape))
        except (ValueError, TypeError, RuntimeError) as exc:
            raise _inputs_not_taken(config, shape, exc) from None
        _check_poisoning(config.poisoning, classes)
        X = torch.randn(n_rule, 4)  # the rule's option values, tried on 4 coordinates
        try:
            agg.get(config.rule.full_name)(X, f=f_rule, **config.rule.options)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"rule.options: {_one_line(exc)}") from None
        a = config.attack
        if a.name == "none" or config.byzantine_count == 0:
            return
        from byzlearn.attacks._probe import probe_attack

        try:
            probe_attack(
                a.name,
                a.options,
                honest=max(config.n - config.byzantine_count, 1),
                f=config.byzantine_count,
                max_dim=sum(p.numel() for p in model.parameters()),
                rule=config.rule.full_name,
                rule_options=config.rule.options,
                identical=a.identical,
            )
        except (ValueError, TypeError) as exc:
            raise ValueError(f"attack.options: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _check_option_names(name: str, options: dict[str, Any], allowed: Sequence[str]) -> None:
    """Refuse an option ``name`` (a dataset, an attack) does not take, naming the valid ones."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) or "none"
        raise ValueError(f"options: {name} has no option {unknown[0]!r} (valid options: {valid})")


# config sections that are discriminated unions, tagged by the name of a registered entry
_TAGGED: dict[str, Registry[Any]] = {"protocol": PROTOCOLS, "engine": ENGINES}

_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.]*): (.*)$", re.S)


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        parts = [str(x) for x in e["loc"]]
        if len(parts) > 1 and parts[0] in _TAGGED and parts[1] in _TAGGED[parts[0]]:
            del parts[1]  # the discriminator tag pydantic puts in the path
        loc = ".".join(parts)
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not a config field)"
        m = _FIELD_PREFIX.match(msg)
        if m:  # a validator named the field relative to its model
            loc = f"{loc}.{m.group(1)}" if loc else m.group(1)
            msg = m.group(2)
        lines.append(f"{loc or '<config>'}: {msg}")
    if len(lines) == 1:
        return f"invalid config: {lines[0]}"
    return "invalid config:\n  " + "\n  ".join(lines)


def parse_config(data: Config | dict[str, Any] | None = None, **overrides: Any) -> Config:
    """Validate a mapping into a :class:`Config` (raises :class:`ConfigError` naming fields)."""
    if isinstance(data, Config):
        data = data.model_dump()
    merged = dict(data or {})
    merged.update(overrides)
    try:
        return Config.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format(err)) from None


def _coerce(key: str, text: str) -> Any:
    """The YAML value of the override ``key=text`` (the text itself when it is not YAML)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except RecursionError:
        raise ConfigError(f"{key}: value nested too deeply") from None
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML: numbers, bools, lists) to a
    plain-data copy of ``data`` (see :func:`plain_data`)."""
    out = plain_data(data)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        node = out
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[: i + 1])}: is not a section")
            node = child
        node[parts[-1]] = plain_data(_coerce(key.strip(), value), key.strip())
    return out


# configs nest a few levels (rule.options.selection_options, network.compute_time); deeper
# data is refused before it reaches the schema
MAX_DEPTH = 64
_SCALARS = (str, int, float, bool, type(None))


def plain_data(value: Any, where: str = "", depth: int = 0) -> Any:
    """A fresh copy of ``value`` made of plain data only: strings, numbers, booleans, null,
    lists and mappings with string or number keys (tuples become lists). Anything else (a
    ``!!binary`` or ``!!timestamp`` value, a set, a recursive alias, more than
    :data:`MAX_DEPTH` levels) raises :class:`ConfigError` naming the dotted place ``where``.
    Aliases that share a value get one copy each, so an override of one changes only it."""
    return _copy_plain(value, where, depth, frozenset())


def _copy_plain(value: Any, where: str, depth: int, inside: frozenset[int]) -> Any:
    place = where or "<config>"
    if isinstance(value, _SCALARS):
        return value
    if not isinstance(value, (dict, list, tuple)):
        raise ConfigError(
            f"{place}: {_describe(value)} is not a config value (configs hold strings, "
            "numbers, booleans, null, lists and mappings)"
        )
    if depth >= MAX_DEPTH:
        top = place.split(".")[0]  # the full path would be MAX_DEPTH parts long
        raise ConfigError(f"{top}: config nested too deeply (more than {MAX_DEPTH} levels)")
    if id(value) in inside:
        raise ConfigError(f"{place}: a recursive alias (the value contains itself)")
    inside = inside | {id(value)}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, _SCALARS):
                raise ConfigError(f"{place}: keys must be strings, got {_describe(key)}")
            out[key] = _copy_plain(item, _join(where, key), depth + 1, inside)
        return out
    return [_copy_plain(v, _join(where, i), depth + 1, inside) for i, v in enumerate(value)]


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _describe(value: Any) -> str:
    """What a value that is not plain data is, for an error message."""
    import datetime

    if isinstance(value, datetime.date):
        return f"a date ({value.isoformat()})"
    if isinstance(value, (bytes, bytearray)):
        return "binary data (!!binary)"
    if isinstance(value, (set, frozenset)):
        return "a set (!!set)"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key written twice in one mapping, a key that is a
    list or a mapping, and reads numbers as YAML 1.2 does (see the resolvers below)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, _SCALARS):
            raise yaml.constructor.ConstructorError(
                None, None, f"keys must be strings, got {_describe(key)}", key_node.start_mark
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} written twice (lines {seen[key]} and {line})",
                key_node.start_mark,
            )  # fmt: skip
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

# Numbers are read as YAML 1.2 (core schema) reads them, in files and in overrides: PyYAML
# follows YAML 1.1, where ``010`` is 8 (octal), ``1:00`` is 60 (base 60), ``1_000`` is 1000,
# ``1e-3`` a string and ``2024-01-01`` a date. Here ``010`` is 10, ``0o10`` 8, ``0x10`` 16,
# ``1e-3`` a float, and ``1:00``, ``1_000`` and ``2024-01-01`` are strings (which a number
# field refuses, naming it).
_YAML11_ONLY = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp"}
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML11_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_INT_12 = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT_12 = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
# an int is tried first: "10" matches both
_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_12, list("-+0123456789"))
_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """A YAML 1.2 integer: decimal (leading zeros allowed: ``010`` is 10), ``0o`` octal or
    ``0x`` hexadecimal."""
    text = str(loader.construct_scalar(node))
    if not _INT_12.match(text):
        raise yaml.constructor.ConstructorError(
            None, None, f"{text!r} is not an integer (YAML 1.2)", node.start_mark
        )
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def read_yaml(path: str | Path) -> Any:
    """The YAML document in ``path``, as plain data (:func:`plain_data`); any problem (missing,
    a directory, not UTF-8, malformed, a key written twice, a value that is not plain data,
    nested too deeply) raises :class:`ConfigError` in one line naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a YAML file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except RecursionError:
        raise ConfigError(f"{path}: config nested too deeply") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    try:
        return plain_data(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Load a YAML config file (or the defaults if ``path`` is None) and apply overrides.

    An empty file (or one of comments only) is an error, not the default config: ``{}`` says
    "all defaults" on purpose."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml(path)
        if loaded is None:
            raise ConfigError(
                f"{path}: config file is empty (write {{}} to train the default config)"
            )
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config fields")
        data = loaded
    return parse_config(apply_overrides(data, overrides))


def field_path_exists(key: str) -> bool:
    """Whether the dotted ``key`` names a config field (``rule.name``, ``protocol.deadline``,
    ``attack.options.z``: anything below a free-form mapping such as ``options`` counts)."""
    models: list[Any] = [Config]  # None stands for a free-form mapping
    for part in key.split("."):
        found, children = False, cast(list[Any], [])
        for model in models:
            if model is None:
                found = True
                children.append(None)
                continue
            fields = getattr(model, "model_fields", {})
            if part in fields:
                found = True
                children.extend(_field_models(fields[part].annotation))
        if not found:
            return False
        models = children
    return True


def _field_models(annotation: Any) -> list[Any]:
    """What may sit below a field: its pydantic models, None for a free-form mapping (``dict``,
    ``Any``), nothing for a scalar or a list."""
    import typing

    if annotation is Any:
        return [None]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _field_models(typing.get_args(annotation)[0])
    if origin is dict:
        return [None]
    if origin in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _field_models(a)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


_NOT_HASHED = {"name", "threads", "checkpoint_every"}


def config_hash(config: Config) -> str:
    """SHA-256 of the resolved config (fields that cannot change results excluded)."""
    payload = config.model_dump(mode="json", exclude=_NOT_HASHED)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class _QuotingDumper(yaml.SafeDumper):
    """A safe dumper that quotes a string YAML 1.1 *or* 1.2 would read as another type
    (``0o10``, ``2024-01-01``), so that this loader and any other read it back as a string."""


_QuotingDumper.yaml_implicit_resolvers = {
    first: list(resolvers) for first, resolvers in yaml.SafeDumper.yaml_implicit_resolvers.items()
}
_QuotingDumper.add_implicit_resolver("tag:yaml.org,2002:int", _INT_12, list("-+0123456789"))
_QuotingDumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def to_yaml(config: Config) -> str:
    """The resolved config as YAML (read back by :func:`read_yaml` as the same values)."""
    return yaml.dump(config.model_dump(mode="json"), Dumper=_QuotingDumper, sort_keys=False)
