"""Load, as a user runs it: benchmarks/load.py at a CI-sized setting.

``SCAFFOLD_STRESS_REQUESTS=10000`` runs the full setting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = int(os.environ.get("SCAFFOLD_STRESS_REQUESTS", "1500"))


def test_every_request_gets_exactly_its_own_result_and_memory_is_bounded() -> None:
    p = subprocess.run(
        [sys.executable, "benchmarks/load.py", "--requests", str(REQUESTS), "--in-flight", "300",
         "--memory-caps", "50,100,200", "--rate", "150", "--rate-requests", "750"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert (
        d["requests"] == REQUESTS and d["lost"] == 0 and d["duplicated"] == 0 and d["mixed_up"] == 0
    )
    assert d["left_after"] == {
        "requests_in_flight": 0,
        "tasks_running": 0,
        "tasks_queued": 0,
        "engine_requests": 0,
    }
    m = d["memory"]
    assert m["linear_fit_r"] > 0.99  # grows linearly with the in-flight cap
    # four times the requests at the same cap: bounded by the cap, not by the requests
    assert m["peak_bytes_4x_requests_at_largest_cap"] < 2 * m["peak_bytes"][-1]
    assert d["scheduling_latency_ms"]["samples"] > 0
    r = d["at_rate"]
    assert r["requests"] == 750 and r["lost"] == r["duplicated"] == r["mixed_up"] == 0
    assert r["left_after"] == d["left_after"]
    assert r["scheduling_latency_ms"]["samples"] > 0


def test_the_saturated_run_alone_for_ab_timing() -> None:
    """``--saturated-only``: the saturated run with its collector figures, and
    nothing else (what an old/new alternation runs)."""
    p = subprocess.run(
        [sys.executable, "benchmarks/load.py", "--requests", "200", "--in-flight", "50",
         "--saturated-only"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["requests"] == 200 and d["lost"] == d["duplicated"] == d["mixed_up"] == 0
    assert "at_rate" not in d and "memory" not in d
    assert isinstance(d["gc_full_collections"], int) and d["gc_full_collections_s"] >= 0


def breakdown(*flags: str) -> dict[str, Any]:
    p = subprocess.run(
        [sys.executable, "benchmarks/load.py", "--in-flight", "50", "--breakdown", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)  # type: ignore[no-any-return]


def test_the_memory_breakdown_adds_up() -> None:
    """``--breakdown``: an in-flight request's bytes by package add up to its total,
    the largest sites are named, and the collector's tracked objects are counted."""
    d = breakdown()
    assert d["in_flight"] == 50 and d["bytes_per_request"] > 0
    assert "scaffold_actors" in d["by_package"] and "trio" in d["by_package"]
    # the packages' shares are of the live bytes at the peak (the baseline left out)
    assert (
        abs(sum(d["by_package"].values()) - d["bytes_per_request"]) < 0.2 * d["bytes_per_request"]
    )
    assert d["largest_sites"] and all(len(site) == 3 for site in d["largest_sites"])
    # what the collector walks per request: a vote of 8 holds at least a job, a
    # task copy and an engine request per sample; the types listed add up to at
    # most the total
    assert d["gc_tracked_objects_per_request"] > 8 * 3
    by_type = dict(d["gc_tracked_by_type"])
    assert sum(by_type.values()) <= d["gc_tracked_objects_per_request"] + 1
    # its samples run without a task of their own; read through open_stream only,
    # each holds a runner task (and its frames, cancel scope and context) instead
    runners = breakdown("--open-stream-only")
    # (at least a runner's and a handler's coroutine more per sample)
    runner_types = dict(runners["gc_tracked_by_type"])
    assert runner_types["coroutine"] >= by_type.get("coroutine", 0) + 8 * 2
    assert runners["bytes_per_request"] > d["bytes_per_request"]
