"""Byzantine and faulty Flower clients for simulations: a ClientApp wrapper.

:class:`ByzantineClientApp` wraps the honest ClientApp of a node. At round t it

1. applies the node ``behaviour`` (``Crash(step)``: no reply from round ``step`` on;
   ``Omission(p)``: no reply with probability p, drawn per (node, round)); a missing reply is an
   error reply, as Flower delivers for a client that fails;
2. on a train message, runs the honest app (the Byzantine client knows its own honest update
   ``u_own = w_own - w_t``) and, with an ``attack``, replaces the model in the reply by
   ``w_t + b_i``, ``b = attack(H, f, rule=..., generator=g_t)``: ``i`` is the client's index in the
   coalition of ``f`` Byzantine clients and ``g_t`` a generator keyed on (seed, round), the same
   for every member, so the coalition sends the f rows of one attack call (distinct attacks
   such as gaussian send f distinct vectors).

``H`` is what the adversary knows. In a simulation run by :class:`LocalGrid`, the grid runs the
honest nodes first and hands their replies to the Byzantine ones (:meth:`observe`): ``H`` is the
round's honest updates, so the omniscient attacks (ALIE, IPM, min-max, the rule-aware ones)
run as in byzlearn's own simulator. Anywhere else (Flower's Ray simulation, a real federation)
the client knows only ``H = [u_own]``.

The reply keeps the honest app's metrics and, with ``mark=True``, carries a ConfigRecord named
:data:`~byzlearn.integrations.flower.strategy.BYZANTINE_KEY` so that a strategy run with
``simulation=True`` can report how many Byzantine replies it kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

import byzlearn.attacks as atk
from byzlearn import keyed
from byzlearn.attacks.behaviours import Behaviour, Crash, Omission, Reliable
from byzlearn.integrations.flower._updates import Layout, read_replies
from byzlearn.integrations.flower.strategy import BYZANTINE_KEY

__all__ = ["ByzantineClientApp", "byzantine_clients", "round_of"]

_BEHAVIOURS = (Reliable, Crash, Omission)


def round_of(message: Message) -> int:
    """The server round of a message: ``config["server-round"]`` (Flower's strategies set it),
    else the group id when it is an integer, else 0."""
    for record in message.content.config_records.values() if message.has_content() else []:
        value = record.get("server-round")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    group = message.metadata.group_id
    return int(group) if group.isdigit() else 0


class ByzantineClientApp(ClientApp):
    """A node's honest ClientApp turned Byzantine or faulty (module docstring).

    Parameters
    ----------
    honest : the node's honest ClientApp (it trains; its reply is then altered).
    attack : a byzlearn attack name (``byzlearn.attacks.names()``), or None for a faulty but
        honest node (behaviour only).
    index, f : this client's row in the coalition's attack, and the coalition's size.
    rule, rule_options : the rule the server uses (rule-aware attacks need it).
    attack_options : the attack's options (``identical``, ``z``, ``std``, ...).
    behaviour : ``Reliable()`` (default), ``Crash(step)`` or ``Omission(p, seed)``.
    seed : keys the attack's generator per round.
    arrays_key : the ArrayRecord key of the model in messages (Flower's default ``"arrays"``).
    mark : set the Byzantine mark in the reply's metrics (simulation reporting).
    """

    def __init__(
        self,
        honest: ClientApp,
        *,
        attack: str | None = None,
        index: int = 0,
        f: int = 1,
        rule: str | None = None,
        rule_options: dict[str, Any] | None = None,
        attack_options: dict[str, Any] | None = None,
        behaviour: Behaviour | None = None,
        seed: int = 0,
        arrays_key: str = "arrays",
        mark: bool = True,
    ) -> None:
        super().__init__()
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (f, index))
        if not ints or f < 1 or not 0 <= index < f:
            raise ValueError(f"need ints f >= 1 and 0 <= index < f, got index={index!r}, f={f!r}")
        if isinstance(seed, bool) or not hasattr(seed, "__index__"):  # int, numpy ints
            raise ValueError(f"seed must be an int, got {seed!r}")
        behaviour = Reliable() if behaviour is None else behaviour
        if not isinstance(behaviour, _BEHAVIOURS):
            raise ValueError(
                f"{type(behaviour).__name__} is not supported in Flower's synchronous rounds; "
                "use Reliable, Crash or Omission"
            )
        options = dict(attack_options or {})
        if attack is not None:
            atk.get(attack)  # unknown names raise here, not in a round
            if rule is None and atk.needs_rule(attack, **options):
                raise ValueError(f"{attack} is rule-aware: pass rule=... (the server's rule)")
        self.honest = honest
        self.attack = attack
        self.index = index
        self.f = f
        self.rule = rule
        self.rule_options = dict(rule_options or {})
        self.attack_options = options
        self.behaviour = behaviour
        self.seed = int(seed)
        self.arrays_key = arrays_key
        self.mark = mark
        self._observed: dict[int, torch.Tensor] = {}

    @property
    def needs_honest_replies(self) -> bool:
        """True for an attacker: :class:`LocalGrid` then runs it after the honest nodes."""
        return self.attack is not None

    def observe(self, message: Message, honest_replies: Sequence[Message]) -> None:
        """Simulation only: the honest replies of ``message``'s round (the omniscient view)."""
        if not message.has_content() or self.arrays_key not in message.content.array_records:
            return
        layout = Layout.of(message.content.array_records[self.arrays_key])
        parsed = read_replies(
            list(honest_replies), layout, arrays_key=self.arrays_key, weight_key="num-examples"
        )
        self._observed = {round_of(message): parsed.updates}

    def __call__(self, message: Message, context: Context) -> Message:
        """Answer ``message`` as the faulty or Byzantine node."""
        t = round_of(message)
        if self.behaviour.reply(t, node=int(context.node_id) % 2**63) is None:
            reason = f"byzlearn: {type(self.behaviour).__name__} sends no reply at round {t}"
            return Message(Error(ErrorCode.CLIENT_APP_CRASHED, reason), reply_to=message)
        reply = self.honest(message, context)
        is_train = message.metadata.message_type.split(".")[0] == "train"
        if self.attack is None or not is_train or not reply.has_content():
            return reply
        sent = message.content.array_records[self.arrays_key]
        layout = Layout.of(sent)
        own = read_replies([reply], layout, arrays_key=self.arrays_key, weight_key="")
        if len(own.nodes) != 1:  # the honest app itself sent something unusable
            return reply
        honest = self._observed.pop(t, None)
        if honest is None or len(honest) == 0:
            honest = own.updates
        options = dict(self.attack_options)
        if self.attack in ("bitflip", "bit_flip") and "own" not in options:
            options["own"] = own.updates.expand(self.f, -1)
        byzantine = atk.get(self.attack)(
            honest,
            self.f,
            rule=self.rule,
            rule_options=self.rule_options or None,
            generator=keyed.generator((self.seed, "attack", t)),
            **options,
        )
        content = reply.content  # the honest app's own reply: altered in place
        content[self.arrays_key] = layout.to_arrays(layout.sent + byzantine[self.index])
        if self.mark:  # a ConfigRecord: FedAvg checks that the MetricRecords have equal keys
            content[BYZANTINE_KEY] = ConfigRecord({"byzantine": True})
        return reply


def byzantine_clients(
    honest: Sequence[ClientApp], attack: str | None, **options: Any
) -> list[ByzantineClientApp]:
    """A coalition: ``honest[i]`` wrapped as member i of ``f = len(honest)`` Byzantine clients
    (``options`` as :class:`ByzantineClientApp`'s)."""
    return [
        ByzantineClientApp(app, attack=attack, index=i, f=len(honest), **options)
        for i, app in enumerate(honest)
    ]
