"""A real multi-node Ray cluster on loopback, for the Ray tests.

Ray binds and dials the host's external address, and tests may reach loopback
only, so every test that starts Ray runs in a network namespace of its own
with nothing but loopback: ``tests/test_ray.py`` starts a pytest run of the
Ray tests under ``unshare -n`` (with ``SCAFFOLD_RAY_NETNS=1``); outside it,
those tests skip.  One cluster per process: a head node that hosts no engine
and two worker nodes, ``node-1`` and ``node-2`` (a custom resource of each
name, so a test can place an actor on either), started on first use.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import pytest

IN_NAMESPACE = os.environ.get("SCAFFOLD_RAY_NETNS") == "1"

_CLUSTER: list[Any] = []
NODES: dict[str, Any] = {}


def need_cluster() -> Any:
    """The cluster (started once per process, with Ray initialised on it); skips
    outside the loopback namespace or without ray."""
    if not IN_NAMESPACE:
        pytest.skip("Ray tests run inside the loopback-only namespace that test_ray.py makes")
    pytest.importorskip("ray")
    if _CLUSTER:
        return _CLUSTER[0]
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            # a lost node is noticed in about 1.5 s, not 30 s
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3},
        },
    )
    for name in ("node-1", "node-2"):
        NODES[name] = cluster.add_node(num_cpus=1, resources={name: 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    _CLUSTER.append(cluster)
    atexit.register(_shutdown)
    return cluster


def add_node(name: str) -> Any:
    """Another worker node with the custom resource ``name``."""
    cluster = need_cluster()
    NODES[name] = cluster.add_node(num_cpus=1, resources={name: 1})
    cluster.wait_for_nodes()
    return NODES[name]


def _shutdown() -> None:
    import ray

    ray.shutdown()
    for cluster in _CLUSTER:
        cluster.shutdown()
    _CLUSTER.clear()
