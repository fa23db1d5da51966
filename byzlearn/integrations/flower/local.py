"""An in-process Flower grid: run a strategy against ClientApps without Ray or a SuperLink.

``LocalGrid(apps)`` implements Flower's ``Grid`` (``flwr.serverapp.Grid``): node ``i`` (id
``first_node_id + i``; 2, 3, ... by default, 1 being the server's) runs ``apps[i]`` in this
process, one after the other in node-id order, on its own copy of each message and with its
own ``Context`` (``node_config``: ``partition-id``, ``num-partitions``; a ``state`` kept across
rounds). A ClientApp that raises gives an error reply, as on a SuperNode.

Apps that declare ``needs_honest_replies`` (Byzantine attackers,
:class:`~byzlearn.integrations.flower.byzantine.ByzantineClientApp`) run after the others and
first receive their replies to the same message batch (``app.observe(message, replies)``): the
omniscient adversary of a simulation.

Like Flower's ServerApp runtime, the grid sets the process's
``flwr.supercore.task_identity.TaskIdentity`` (run 0, the server's node id), which the messages
a strategy builds read.

It serves tests, examples and quick experiments (a Flower strategy's ``start(grid=...)`` runs
unchanged); Flower's own simulation engine (Ray) and deployment (SuperLink, SuperNodes) run the
same ServerApp and ClientApp code.
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["LocalGrid"]


class LocalGrid(Grid):
    """Flower ``Grid`` that delivers messages to ClientApps in this process (module docstring)."""

    def __init__(
        self,
        apps: Sequence[ClientApp],
        *,
        run_config: dict[str, Any] | None = None,
        first_node_id: int = SUPERLINK_NODE_ID + 1,
    ) -> None:
        if not apps:
            raise ValueError("LocalGrid needs at least one ClientApp")
        self.apps = {first_node_id + i: app for i, app in enumerate(apps)}
        self.contexts = {
            node: Context(
                run_id=0,
                node_id=node,
                node_config={"partition-id": i, "num-partitions": len(apps)},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for i, node in enumerate(self.apps)
        }
        self._run = Run.create_empty(run_id=0)
        self._replies: dict[str, Message] = {}
        # The identity of this process's task, as Flower's ServerApp runtime sets it (messages
        # built by a strategy read it).
        TaskIdentity.task_id, TaskIdentity.run_id = 1, 0
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    def set_run(self, run: Run) -> None:
        """Set the run this grid serves."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run this grid serves."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """A message to one node."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """The ids of the nodes (all always connected)."""
        return list(self.apps)

    def _deliver(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        app = self.apps.get(node)
        if app is None:
            error = Error(ErrorCode.NODE_UNAVAILABLE, f"no node {node}")
            return Message(error, reply_to=message)
        try:
            return app(copy.deepcopy(message), self.contexts[node])
        except Exception as err:  # a failing ClientApp is an error reply, as on a SuperNode
            reason = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Run every destination app on its message (honest nodes first); return message ids."""
        messages = list(messages)
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's grids do
        ordered = sorted(messages, key=lambda m: m.metadata.dst_node_id)  # runs reproducible
        late = [m for m in ordered if _observes(self.apps.get(m.metadata.dst_node_id))]
        first = [m for m in ordered if m not in late]
        replies = {m.metadata.message_id: self._deliver(m) for m in first}
        honest = [r for r in replies.values() if r.has_content()]
        for message in late:
            app = self.apps[message.metadata.dst_node_id]
            app.observe(message, honest)  # type: ignore[attr-defined]
            replies[message.metadata.message_id] = self._deliver(message)
        for reply in replies.values():
            reply.metadata.__dict__["_message_id"] = str(uuid4())
        self._replies.update(replies)
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to ``message_ids`` (each returned once)."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then pull every reply (the apps have run by then; ``timeout`` is not needed)."""
        return self.pull_messages(self.push_messages(messages))


def _observes(app: ClientApp | None) -> bool:
    return bool(getattr(app, "needs_honest_replies", False))
