"""HTTP client cost: OpenAIEngine's CPU per request with many requests in flight.

A loopback ``openai_server`` child serves a simulated engine that answers at once,
so what is measured is the client: ``--requests`` one-body requests, all submitted
together with ``max_concurrent=--in-flight``, through ``OpenAIEngine`` as shipped
(its connection pool sharded into httpx clients of a few connections each) and through one
httpx pool of ``--in-flight`` connections (httpcore scans every connection of a pool
on each request and release, encode/httpcore#1035), alternating in the same run.

Prints one JSON object: client CPU microseconds per request and wall seconds per
round for each, and the ratio one-pool / sharded.  Needs the ``server`` extra.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import anyio
import httpx

import engine_bridge._engines._openai as openai_module
from engine_bridge import EngineRequest, OpenAIEngine, SamplingParams

SERVER = """
import sys, uvicorn
from engine_bridge import CostModel, SimulatedEngine
from engine_bridge.openai_server import create_app
engine = SimulatedEngine(cost=CostModel.instant(), max_batch_size=1 << 16, kv_capacity=1 << 40)
uvicorn.run(create_app(engine, "m"), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def one_round(url: str, requests: int, in_flight: int, shard: int) -> tuple[float, float]:
    """(client CPU seconds, wall seconds) for ``requests`` requests at once."""
    openai_module._SHARD = shard  # connections per httpx client
    async with OpenAIEngine(url, "m", max_concurrent=in_flight) as engine:

        async def one(i: int) -> None:
            request = EngineRequest(SamplingParams(max_tokens=8), prompt=f"q{i}", stream=False)
            async with engine.open_stream(request) as deltas:
                async for _ in deltas:
                    pass

        async def all_at_once() -> None:
            async with anyio.create_task_group() as tg:
                for i in range(requests):
                    tg.start_soon(one, i)

        await all_at_once()  # opens the connections: not counted
        cpu, wall = time.process_time(), time.perf_counter()
        await all_at_once()
        return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--in-flight", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of each, alternating")
    ap.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    ap.add_argument(
        "--sweep",
        default="",
        help="comma-separated connections per client to measure as well (e.g. 4,16,32,64)",
    )
    args = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the loopback server did not start") from None
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/v1"
        shipped = openai_module._SHARD
        arms = {"sharded": shipped, "one_pool": args.in_flight}
        arms.update({f"clients_of_{n}": int(n) for n in args.sweep.split(",") if n})
        rounds: dict[str, list[tuple[float, float]]] = {k: [] for k in arms}
        for _ in range(args.repeats):
            for name, shard in arms.items():
                rounds[name].append(
                    anyio.run(
                        one_round, url, args.requests, args.in_flight, shard, backend=args.backend
                    )
                )
        openai_module._SHARD = shipped
    finally:
        server.kill()
        server.wait()
    out: dict[str, Any] = {
        "benchmark": "http_client",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "httpx": httpx.__version__,
        "backend": args.backend,
        "requests": args.requests,
        "in_flight": args.in_flight,
        "connections_per_client": arms,
    }
    cpu_us = {
        k: statistics.median(c for c, _ in v) / args.requests * 1e6 for k, v in rounds.items()
    }
    out["client_cpu_us_per_request"] = {k: round(v, 1) for k, v in cpu_us.items()}
    out["wall_s_per_round"] = {
        k: round(statistics.median(w for _, w in v), 3) for k, v in rounds.items()
    }
    out["cpu_ratio_one_pool_vs_sharded"] = round(cpu_us["one_pool"] / cpu_us["sharded"], 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
