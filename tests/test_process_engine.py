"""ProcessEngine: an engine_bridge.openai_server child per replica (simulated engine)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

pytest.importorskip("starlette")

from test_engine_conformance import FRUITS

from engine_bridge import EngineError, EnginePool, ProcessEngine, ReplicaState
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker
from scaffold_actors.methods import MajorityVote, Sampler

SIMULATED = ["--simulated-reply", FRUITS, "--max-context", "512"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def sleeper(tmp_path: Path) -> tuple[str, Path]:
    """A stand-in 'python' that writes its pid, says nothing and never listens."""
    pid_file = tmp_path / "pid"
    script = tmp_path / "sleeper.sh"
    script.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    script.chmod(0o755)
    return str(script), pid_file


async def wait_for(pid_file: Path) -> int:
    path = trio.Path(pid_file)
    while not await path.exists() or not (await path.read_text()).strip():  # noqa: ASYNC110
        await trio.sleep(0.01)
    return int(await path.read_text())


async def test_serves_and_the_child_is_gone_after_close() -> None:
    engine = ProcessEngine("simulated", extra_args=SIMULATED)
    mv = MajorityVote(
        Sampler(max_tokens=16),
        samples=4,
        early_stop=False,  # all four finish (the same answer would stop it at three)
        extract=lambda s: (s or "").split(",")[0] or None,
    )
    async with AsyncScaffoldingLlm(mv, {"generation": EngineWorker(engine)}) as llm:
        pid = engine.pid
        assert pid is not None and engine.healthy
        assert engine.url is not None and engine.url.startswith("http://127.0.0.1:")
        r = await llm.generate("fruits?")
        assert r.output is not None and r.output.details["answer"] == "Apples"
        assert engine.completed == 4
    assert engine.pid is None and not engine.healthy and not alive(pid)


async def test_a_child_that_fails_to_start_raises_with_its_stderr() -> None:
    engine = ProcessEngine("simulated", extra_args=["--no-such-flag"])
    with pytest.raises(EngineError, match=r"exited with status 2 before listening") as info:
        async with engine:
            pass
    assert "unrecognized arguments: --no-such-flag" in str(info.value)
    assert engine.pid is None


async def test_a_child_that_never_comes_up_is_killed_after_the_startup_timeout(
    tmp_path: Path,
) -> None:
    python, pid_file = sleeper(tmp_path)
    engine = ProcessEngine("simulated", python=python, startup_timeout=0.5, stop_timeout=0.5)
    with pytest.raises(EngineError, match=r"did not start within 0.5s"):
        async with engine:
            pass  # (the start gave up on its own timeout: the error says which)
    assert not alive(await wait_for(pid_file))


async def test_cancelling_the_start_stops_the_child(tmp_path: Path) -> None:
    python, pid_file = sleeper(tmp_path)
    engine = ProcessEngine("simulated", python=python, stop_timeout=0.5)
    with trio.move_on_after(0.5) as scope:
        async with engine:
            pytest.fail("started")  # pragma: no cover
    assert scope.cancelled_caught and engine.pid is None
    assert not alive(await wait_for(pid_file))


async def test_a_pool_of_children_survives_one_killed_mid_run() -> None:
    engines = [ProcessEngine("simulated", extra_args=SIMULATED) for _ in range(2)]
    pool = EnginePool(engines, affinity=False, max_retries=2)
    mv = MajorityVote(Sampler(max_tokens=16), samples=8, early_stop=False)
    async with AsyncScaffoldingLlm(mv, {"generation": EngineWorker(pool)}) as llm:
        victim = engines[0].pid
        dead, live = pool.replicas
        assert victim is not None

        async def kill_when_busy() -> None:
            while pool.replicas[0].in_flight == 0:  # noqa: ASYNC110
                await trio.sleep(0.001)
            os.kill(victim, signal.SIGKILL)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_when_busy)
            results = await llm.generate([f"q{i}" for i in range(6)])
        assert all(r.output is not None and r.usage.completion_tokens > 0 for r in results)
        assert pool.replicas == (live,)  # the dead one was taken out
        assert dead.state in (ReplicaState.DEAD, ReplicaState.CLOSED)
        assert live.state is ReplicaState.LIVE and live.served >= 6 * 8 - dead.served
        assert pool.stats()["retried"] >= 1


def test_a_killed_parent_leaves_no_child(tmp_path: Path) -> None:
    """The parent dies without closing the engine: the child notices and exits."""
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys, trio
            from engine_bridge import ProcessEngine

            async def main():
                engine = ProcessEngine("simulated", extra_args={SIMULATED!r})
                await engine.__aenter__()
                print(engine.pid, flush=True)
                os._exit(0)  # no close: as if killed

            trio.run(main)
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    child = int(out.stdout.strip())
    deadline = time.monotonic() + 120  # a hang guard: we wait for the exit
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(child)


async def test_the_cli_runs_replicas_in_child_processes() -> None:
    cli = await trio.run_process(
        [sys.executable, "-m", "scaffold_actors.cli", "run", "q", "--engine", "simulated",
         "--replicas", "2", "--replica-processes", "--samples", "4", "--json"],
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    import json

    out = json.loads(cli.stdout)
    assert out["usage"]["tasks"] == 4 and out["usage"]["completion_tokens"] > 0
