"""The ``ray`` engine on a two-node cluster made with Ray's local cluster utilities: actors
placed on both nodes, a round trip across them, and a lost node as crashed workers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("ray")

from byzlearn.engines import Message
from byzlearn.engines.ray_engine import RayEngine
from tests.conftest import ROOT
from tests.engines.test_contract import Echo

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head node and one more node, one CPU each."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    quick = {"health_check_period_ms": 500, "health_check_failure_threshold": 2}
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "_system_config": quick},  # a lost node found in ~1 s
    )
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(
        address=c.address,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    yield c
    ray.shutdown()
    c.shutdown()


def test_two_nodes_run_one_actor_each_and_a_lost_node_is_crashed_workers(cluster) -> None:
    engine = RayEngine(actors=2)  # two actors of one CPU: one per node
    ids = engine.add_group("worker", 4, Echo())
    server = engine.add_node("server")
    placement = engine.placement()
    assert len({node for node, _, _ in placement}) == 2
    assert sorted(m for _, members, _ in placement for m in members) == ids
    server.multicast(Message(kind="ask", payload=2.0, round=1), ids)
    got = sorted(server.gather(1, q=4), key=lambda m: m.sender)
    assert [m.payload.tolist() for m in got] == [[i, 1.0, 2.0] for i in ids]
    head = cluster.head_node.node_id
    (lost_node, lost, _) = next(p for p in placement if p[0] != head)
    (other,) = [n for n in cluster.list_all_nodes() if n.node_id == lost_node]
    cluster.remove_node(other)  # a machine lost: its actor dies with it
    server.multicast(Message(kind="ask", round=2), ids)
    got = server.gather(2, q=4, deadline=30.0)  # returns once the lost actor is found dead
    assert sorted(int(m.sender) for m in got) == sorted(set(ids) - set(lost))
    assert sorted(engine.crashed) == sorted(lost) and server.clock < 25.0
    engine.close()
