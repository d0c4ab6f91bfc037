"""``scaffold run --ray [ADDRESS] --replicas N``: the engines run as Ray actors,
one per node (inside the loopback namespace of test_ray.py only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import raycluster

SCAFFOLD = str(Path(sys.executable).with_name("scaffold"))


def run(*args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    proc = subprocess.run(
        [SCAFFOLD, "run", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=900,
        env=None if env is None else {**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_scaffold_run_on_ray_replicas_one_per_node() -> None:
    cluster = raycluster.need_cluster()
    out = run(
        "What is 2 + 2?", "--engine", "simulated", "--method", "majority-vote",
        "--samples", "8", "--ray", cluster.address, "--replicas", "2",
    )  # fmt: skip
    engines = out["engines"]
    assert isinstance(engines, list) and len(engines) == 2
    assert len({e["node_id"] for e in engines}) == 2  # one engine per node
    assert out["answer"] is not None and out["usage"]["tasks"] >= 1  # type: ignore[index]


@pytest.mark.slow_model
def test_scaffold_run_embedded_model_on_two_nodes_with_ray_auto() -> None:
    """The README's question on the embedded model, two transformers engines in
    Ray actors on two nodes, the cluster found by `--ray` alone (auto: here
    through RAY_ADDRESS, since Ray's own search would see every cluster of the
    machine, other test runs' included)."""
    cluster = raycluster.need_cluster()
    pytest.importorskip("transformers")
    out = run(
        "What is 12 + 7? Give the final answer as \\boxed{}.", "--samples", "4",
        "--max-tokens", "16", "--ray", "--replicas", "2",
        env={"RAY_ADDRESS": cluster.address},
    )  # fmt: skip
    engines = out["engines"]
    assert isinstance(engines, list) and len({e["node_id"] for e in engines}) == 2
    assert all("HFEngine" not in e["engine"] or e["node_ip"] for e in engines)
    assert out["usage"]["completion_tokens"] > 0  # type: ignore[index]


def test_replica_resources_are_checked_before_any_engine_starts() -> None:
    proc = subprocess.run(
        [SCAFFOLD, "run", "q", "--engine", "simulated", "--ray", "--replica-resources", "{\"gpus\": 1}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "unknown key 'gpus'" in proc.stderr
    proc = subprocess.run(
        [SCAFFOLD, "run", "q", "--engine", "simulated", "--replica-resources", "{}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "--replica-resources is for --ray" in proc.stderr


def test_a_cluster_that_does_not_answer_is_a_clear_error_not_a_hang() -> None:
    """RayEngine joining an address where no cluster runs: an EngineError naming
    the address, at the latest after start_timeout (in a process of its own:
    this one has joined the test cluster)."""
    raycluster.need_cluster()
    code = (
        "import trio\n"
        "from engine_bridge import RayEngine, EngineError\n"
        "async def main():\n"
        "    try:\n"
        "        async with RayEngine('simulated', address='127.0.0.1:9', start_timeout=20):\n"
        "            pass\n"
        "    except EngineError as exc:\n"
        "        print('ERROR', exc)\n"
        "trio.run(main)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )  # (a hang guard: the engine gives up after 20 s)
    assert "ERROR RayEngine 'simulated': could not join the Ray cluster at 127.0.0.1:9" in (
        proc.stdout
    ), proc.stdout + proc.stderr[-2000:]
