"""RayEngine on a real multi-node Ray cluster (loopback only): engines placed on
nodes, a pool across nodes, and the faults: a node killed mid-run, an actor
that fails to start or finds no node, a cancel while the remote engine is
stalled, a replica drained under load.

These run inside the loopback-only network namespace that ``test_ray.py``
makes (one cluster for the whole run, see ``raycluster.py``); elsewhere they
skip.  Every wait is on state (an event, the actor's own counts) under a hang
guard, never a wall-clock budget.
"""

from __future__ import annotations

import asyncio
import functools
import warnings
from typing import Any

import pytest
import raycluster
import trio

from engine_bridge import (
    AbortNotAcknowledgedWarning,
    CostModel,
    EngineClosedError,
    EngineError,
    EnginePool,
    EngineRequest,
    RayEngine,
    ReplicaState,
    SamplingParams,
    SimulatedEngine,
)

REPLY = "one two three four five six seven eight nine ten eleven twelve"


@pytest.fixture(scope="module")
def cluster() -> Any:
    return raycluster.need_cluster()


def slow_simulated(step: float) -> Any:
    """A simulated engine whose steps take ``step`` real seconds (in the actor)."""
    return functools.partial(SimulatedEngine, REPLY, cost=CostModel(0.0, step, 0.0))


def on(node: str, engine: Any = None, **kw: Any) -> RayEngine:
    return RayEngine(engine or functools.partial(SimulatedEngine, REPLY), resources={node: 1}, **kw)


def greedy(max_tokens: int = 12) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0)


async def read(engine: Any, prompt: str, max_tokens: int = 12) -> str:
    text = ""
    async with engine.open_stream(EngineRequest(greedy(max_tokens), prompt=prompt)) as stream:
        async for delta in stream:
            text += delta.text
    return text


async def test_engines_on_named_nodes_and_a_pool_across_them(cluster: Any) -> None:
    """Each engine runs on the node it asked for; a pool sends a prompt's samples
    to one replica (prefix affinity) and new prompts to the least loaded."""
    with trio.fail_after(120):  # a hang guard
        one, two = on("node-1"), on("node-2")
        async with EnginePool([one, two]) as pool:
            assert one.node["node_id"] != two.node["node_id"]
            assert one.node["node_ip"] == "127.0.0.1"  # loopback only
            whole = await read(one, "q")
            texts: list[str] = []
            async with trio.open_nursery() as nursery:
                for i in range(8):

                    async def sample(i: int = i) -> None:
                        texts.append(await read(pool, "the same prompt"))

                    nursery.start_soon(sample)
            assert texts == [whole] * 8
            served = {r.name: r.served for r in pool.replicas}
            assert sorted(served.values()) == [0, 8]  # one replica holds the prompt
            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(read, pool, f"prompt {i}")
            assert all(r.served > 0 for r in pool.replicas)
            for engine in (one, two):
                stats = await engine.stats()
                assert stats["active"] == 0 and stats["aborted"] == 0


class Watched(RayEngine):
    """A RayEngine that says when it delivered from two requests."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.delivered = trio.Event()
        self._from: set[Any] = set()

    def _deliver(self, state: Any, items: Any) -> None:
        super()._deliver(state, items)
        self._from.add(state.key)
        if len(self._from) == 2:
            self.delivered.set()


async def test_a_node_killed_mid_run(cluster: Any) -> None:
    """node-2 dies while its replica streams two requests and holds three more
    back: the two it had delivered from fail loudly (EngineClosedError naming
    the node and the request), the three go to node-1, the survivors finish,
    nothing is duplicated, and node-1's engine holds nothing at the end."""
    one = on("node-1", slow_simulated(0.5), max_concurrent=8)
    two = Watched(slow_simulated(0.5), resources={"node-2": 1}, max_concurrent=2)
    results: dict[int, str | BaseException] = {}
    with trio.fail_after(240):  # a hang guard
        async with EnginePool([one, two], affinity=False) as pool:
            whole = await read(one, "p")
            two_id = str(two.node["node_id"])[:12]

            async def request(i: int) -> None:
                text = ""
                try:
                    async with pool.open_stream(EngineRequest(greedy(), prompt="p")) as s:
                        async for delta in s:
                            text += delta.text
                    results[i] = text
                except EngineError as exc:
                    results[i] = exc

            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(request, i)
                await two.delivered.wait()
                await trio.to_thread.run_sync(
                    functools.partial(
                        cluster.remove_node, raycluster.NODES.pop("node-2"), allow_graceful=False
                    )
                )
            failed = [r for r in results.values() if isinstance(r, BaseException)]
            done = [r for r in results.values() if isinstance(r, str)]
            assert len(results) == 10 and len(failed) == 2, results
            assert done == [whole] * 8  # whole, never doubled
            for exc in failed:
                # the pool's error for a replica lost after it delivered: the
                # engine's EngineClosedError, naming the node and the request
                assert isinstance(exc.__cause__, EngineClosedError), exc
                assert two_id in str(exc) and "while serving request" in str(exc)
            assert not two.healthy
            assert (await one.stats())["active"] == 0
            assert (await one.stats())["completed"] == 1 + 8  # the 3 held back went there
    raycluster.add_node("node-2")  # for the tests after this one


async def test_an_actor_that_fails_to_start(cluster: Any) -> None:
    """The engine's own error at start comes back (EngineError from it); an
    actor no node can take fails after start_timeout, naming what it asked."""

    def broken() -> Any:
        raise ValueError("no such model: nowhere")

    engine = RayEngine(broken, resources={"node-1": 1})
    with trio.fail_after(120), pytest.raises(EngineError, match="failed to start") as info:
        async with engine:
            pass
    assert isinstance(info.value.__cause__, ValueError)
    assert "no such model" in str(info.value)
    assert engine.actor is None and not engine.healthy

    nowhere = RayEngine("simulated", resources={"no-such-node": 1}, start_timeout=1.0)
    with trio.fail_after(120), pytest.raises(EngineError, match="no Ray node took") as info:
        async with nowhere:
            pass
    assert "no-such-node" in str(info.value)


async def test_a_cancel_while_the_remote_engine_is_stalled(cluster: Any) -> None:
    """An engine that takes an hour per step holds the request without output:
    cancelling it returns once the actor's engine dropped it (its own count),
    without waiting for the step."""
    engine = on("node-1", slow_simulated(3600.0))
    with trio.fail_after(120):  # a hang guard
        async with engine:
            with warnings.catch_warnings():
                warnings.simplefilter("error", AbortNotAcknowledgedWarning)
                held = trio.Event()
                with trio.CancelScope() as scope:
                    # open_stream returns once the actor's engine took the request
                    request = EngineRequest(greedy(50), prompt="q")
                    async with engine.open_stream(request) as stream:
                        assert (await engine.stats())["active"] == 1  # its own count
                        held.set()
                        scope.cancel()
                        async for _ in stream:
                            raise AssertionError("an hour-long step produced output")
                assert held.is_set() and scope.cancelled_caught
            stats = await engine.stats()
            assert stats["active"] == 0 and stats["aborted"] == 1
            assert engine.num_active == 0 and engine.aborted == 1


async def test_a_replica_drained_under_load(cluster: Any) -> None:
    """Draining a replica while it streams: its requests finish, new ones go to
    the other, it is closed (its actor gone), and nothing is lost."""
    one = on("node-1", slow_simulated(0.01))
    two = on("node-2", slow_simulated(0.01))
    texts: list[str] = []
    with trio.fail_after(240):  # a hang guard
        async with EnginePool([one, two], affinity=False) as pool:
            whole = await read(one, "p")
            started = trio.Event()

            async def request() -> None:
                text = ""
                async with pool.open_stream(EngineRequest(greedy(), prompt="p")) as s:
                    async for delta in s:
                        text += delta.text
                        started.set()
                texts.append(text)

            async with trio.open_nursery() as nursery:
                for _ in range(12):
                    nursery.start_soon(request)
                await started.wait()
                assert two.num_active > 0
                await pool.drain(two)
                assert two.actor is None
                for _ in range(6):
                    nursery.start_soon(request)
            assert texts == [whole] * 18
            assert [r.engine for r in pool.replicas] == [one]
            assert pool.replicas[0].state is ReplicaState.LIVE
            assert (await one.stats())["active"] == 0


async def test_a_remote_error_comes_back_as_itself(cluster: Any) -> None:
    """An error of the engine in the actor is raised here as its own type."""
    from engine_bridge import InvalidRequestError

    engine = on("node-1", functools.partial(SimulatedEngine, REPLY, max_context=32))
    with trio.fail_after(120):
        async with engine:
            with pytest.raises(InvalidRequestError) as info:
                await read(engine, "word " * 100, 4)
            assert info.value.field == "prompt"
            assert await read(engine, "q", 3)  # still serving
            assert engine.healthy and (await engine.stats())["refused"] == 1


def test_the_actors_event_stream_sends_what_came_while_it_waited_at_a_yield() -> None:
    """EngineHost (the actor's side, driven here without Ray): two requests
    finish in the engine while the reader holds the event stream at a yield;
    resumed, it sends the rest of each, its last delta, and its end."""
    from engine_bridge._scaling._ray import EngineHost

    async def main() -> dict[str, list[Any]]:
        host = EngineHost("simulated", {})
        got: dict[str, list[Any]] = {"r1": [], "r2": []}
        ends: dict[str, Any] = {}
        async with SimulatedEngine(REPLY, cost=CostModel.instant()) as engine:
            host.engine = engine
            events = host.events()
            for rid in got:
                assert await host.submit(rid, EngineRequest(greedy(), prompt="q"))
            for rid, items, end in await events.__anext__():  # the reader holds it here ...
                got[rid] += items
                if end is not None:
                    ends[rid] = end
            for rid in got:
                await host._live[rid].done.wait() if rid in host._live else None  # ... while both end
            while len(ends) < 2:
                for rid, items, end in await events.__anext__():
                    got[rid] += items
                    if end is not None:
                        ends[rid] = end
            assert ends == {"r1": ("end", None), "r2": ("end", None)}
            assert host.stats()["completed"] == 2 and host.stats()["live"] == 0
        return got

    for deltas in asyncio.run(main()).values():
        assert deltas[-1].finish_reason is not None
        assert "".join(d.text for d in deltas).strip() == REPLY


def test_the_actors_abort_returns_once_its_engine_dropped_the_request() -> None:
    """EngineHost.abort on an engine stalled for an hour: it returns at once,
    with the engine (its own count) holding nothing; the event stream then
    ends the request with no delta; a refusal is submit()'s error and nothing
    of it comes through the event stream."""
    from engine_bridge import InvalidRequestError
    from engine_bridge._scaling._ray import EngineHost

    async def main() -> None:
        host = EngineHost("simulated", {})
        async with SimulatedEngine(REPLY, cost=CostModel(0.0, 3600.0, 0.0), max_context=64) as engine:
            host.engine = engine
            events = host.events()
            assert await host.submit("r1", EngineRequest(greedy(), prompt="q"))  # taken
            assert engine.num_active == 1
            stats = await host.abort("r1")
            assert stats["active"] == 0 and stats["aborted"] == 1 and engine.num_active == 0
            assert await events.__anext__() == [("r1", [], ("end", None))]
            with pytest.raises(InvalidRequestError):
                await host.submit("r2", EngineRequest(greedy(), prompt="word " * 100))
            assert host.stats()["refused"] == 1 and host._dirty == {}

    asyncio.run(main())


def test_bad_arguments_are_refused_at_once() -> None:
    with pytest.raises(ValueError, match="unknown engine kind"):
        RayEngine("vllm")
    with pytest.raises(ValueError, match="factory"):
        RayEngine(lambda: None, engine_options={"seed": 1})


async def test_requires_ray_started_engine() -> None:
    with pytest.raises(EngineClosedError):
        await read(RayEngine("simulated"), "q")
