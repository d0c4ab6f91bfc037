"""EnginePool: replicas behind one engine (simulated replicas under a mock clock,
and two real OpenAI-compatible servers on loopback)."""

from __future__ import annotations

from typing import Any, Self

import pytest
import trio
from helpers import collect

from engine_bridge import (
    CostModel,
    EngineClosedError,
    EngineError,
    EnginePool,
    EngineRequest,
    InvalidRequestError,
    PrefixGroup,
    ReplicaState,
    SamplingParams,
    SimulatedCall,
    SimulatedEngine,
)
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker
from scaffold_actors.methods import MajorityVote, Sampler

LONG = "Consider the following problem carefully and reason step by step. " * 6


def reply(call: SimulatedCall) -> str:
    n = call.prompt.rsplit("#", 1)[-1].split()[0]
    return "so " * (20 + call.index % 5) + f"\\boxed{{{n}}}"


def replica(**kw: Any) -> SimulatedEngine:
    kw.setdefault("cost", CostModel(prefill_per_token=1e-4, step_base=0.01, step_per_seq=1e-3))
    return SimulatedEngine(reply, prefix_cache_blocks=4096, **kw)


def req(
    prompt: str, tokens: int = 64, stream: bool = False, group: PrefixGroup | None = None
) -> EngineRequest:
    return EngineRequest(
        SamplingParams(max_tokens=tokens), prompt=prompt, stream=stream, group=group
    )


async def run_all(
    pool: EnginePool, prompts: list[str], group: PrefixGroup | None = None
) -> list[str]:
    out: list[str] = [""] * len(prompts)

    async def one(i: int) -> None:
        out[i] = (await collect(pool, req(prompts[i], group=group))).text

    async with trio.open_nursery() as n:
        for i in range(len(prompts)):
            n.start_soon(one, i)
    return out


def served(pool: EnginePool) -> list[int]:
    return [r.served for r in pool.replicas]


async def test_least_loaded_dispatch_spreads_distinct_prompts(autojump_clock: object) -> None:
    engines = [replica(), replica(), replica()]
    async with EnginePool(engines) as pool:
        texts = await run_all(pool, [f"{LONG} #{i}" for i in range(12)])
        assert all(t.endswith(f"\\boxed{{{i}}}") for i, t in enumerate(texts))
        assert served(pool) == [4, 4, 4]
        assert pool.num_active == 0 and all(e.num_active == 0 for e in engines)
    assert [e.healthy for e in engines] == [False] * 3  # closed with the pool


async def test_prefix_affinity_keeps_samples_on_one_replica(autojump_clock: object) -> None:
    """Majority vote of 8 on 4 prompts, each vote's samples one prefix group:
    with affinity, each prompt's samples run where its KV blocks are, so the
    prompt is prefilled about once instead of on every replica; without it,
    samples scatter and prefill repeats."""
    prompts = [f"#{i} {LONG}" for i in range(4) for _ in range(8)]  # distinct from the start
    prefill = {}
    for affinity in (True, False):
        engines = [replica(), replica()]
        async with EnginePool(engines, affinity=affinity) as pool:
            for start in range(0, len(prompts), 8):  # one vote after another
                await run_all(pool, prompts[start : start + 8], PrefixGroup(8))
            if affinity:
                assert pool.affinity_hits == 28 and pool.affinity_spills == 0
                assert sorted(served(pool)) == [16, 16]
        prefill[affinity] = sum(e.prefill_tokens for e in engines)
        cached = sum(e.cached_prompt_tokens for e in engines)
        assert prefill[affinity] + cached == sum(
            engines[0].count_prompt_tokens(req(p)) for p in prompts
        )
    n = engines[0].count_prompt_tokens(req(prompts[0]))
    tail = n % 16  # the part of a prompt past its last full block is never reused
    # with affinity each prompt's full blocks are computed once, on its replica
    assert prefill[True] == 4 * n + 28 * tail
    # without, the samples of a vote land on both replicas: computed twice
    assert prefill[False] == 8 * n + 24 * tail


async def test_a_saturated_replica_spills_its_prompt(autojump_clock: object) -> None:
    async with EnginePool([replica(), replica()], saturation=8) as pool:
        await run_all(pool, [f"{LONG} #1"] * 8)
        assert sorted(served(pool)) == [0, 8]  # all on the prompt's replica
    async with EnginePool([replica(), replica()], saturation=3) as pool:
        await run_all(pool, [f"{LONG} #1"] * 8)
        # the owner takes 3, then each spilled sample goes to the least loaded
        assert sorted(served(pool)) == [4, 4] and pool.affinity_spills == 5


async def test_a_dead_replica_is_taken_out_and_its_requests_retried(
    autojump_clock: object, deterministic_scheduling: None
) -> None:
    first_on: dict[int, str] = {}

    def recording(name: str) -> SimulatedEngine:
        def respond(call: SimulatedCall) -> str:
            first_on.setdefault(int(call.prompt.rsplit("#", 1)[-1]), name)
            return reply(call)

        return SimulatedEngine(respond, cost=CostModel(1e-4, 0.01, 1e-3))

    a, b = recording("a"), recording("b")
    async with EnginePool([a, b]) as pool:
        results: dict[int, Any] = {}

        async def one(i: int) -> None:
            try:
                results[i] = (await collect(pool, req(f"{LONG} #{i}", stream=i % 4 < 2))).text
            except EngineError as exc:
                results[i] = exc

        async with trio.open_nursery() as n:
            for i in range(8):
                n.start_soon(one, i)
            await trio.sleep(0.1)  # all admitted, a few tokens out
            assert all(e.num_active == 4 for e in (a, b))
            a.inject_failure()
        # on replica-1, streaming requests had delivered text -> a clear error; the
        # others had delivered nothing -> sent to b again, and completed
        on_a = {i for i, name in first_on.items() if name == "a"}
        streaming = {i for i in range(8) if i % 4 < 2}
        assert len(on_a) == 4 and on_a & streaming and on_a - streaming
        failed = {i: r for i, r in results.items() if isinstance(r, EngineError)}
        assert set(failed) == on_a & streaming
        for err in failed.values():
            assert "replica replica-1 failed (after delivering output)" in str(err)
        done = {i: t for i, t in results.items() if isinstance(t, str)}
        assert set(done) == set(range(8)) - set(failed)
        assert all(t.endswith(f"\\boxed{{{i}}}") for i, t in done.items())
        assert pool.retried == len(on_a - streaming)
        await trio.sleep(0.001)  # the dead replica's close
        assert [r.name for r in pool.replicas] == ["replica-2"]  # taken out and closed
        assert not a.healthy and pool.healthy
        assert (await collect(pool, req(f"{LONG} #99"))).text.endswith("\\boxed{99}")
        assert pool.num_active == 0 and b.num_active == 0


async def test_when_every_replica_is_gone_requests_fail_clearly(autojump_clock: object) -> None:
    a = replica()
    async with EnginePool([a], max_retries=3) as pool:
        with pytest.raises(EngineError, match=r"replica-1 failed \(no other replica is live\)"):
            async with pool.open_stream(req("x #1")) as stream:
                a.inject_failure()
                async for _ in stream:
                    pass
        assert not pool.healthy
        with pytest.raises(EngineError, match="no live replica in the pool"):
            async with pool.open_stream(req("x #2")):
                pass
    async with EnginePool() as empty:
        with pytest.raises(EngineError, match=r"no live replica.*none"):
            await collect(empty, req("x #3"))
    with pytest.raises(EngineClosedError):
        await collect(EnginePool([replica()]), req("x #4"))


async def test_the_requests_own_errors_are_not_retried(autojump_clock: object) -> None:
    def malformed(call: SimulatedCall) -> Any:
        return 42 if "bad" in call.prompt else "fine \\boxed{1}"

    engines = [SimulatedEngine(malformed, max_context=64) for _ in range(2)]
    async with EnginePool(engines) as pool:
        with pytest.raises(InvalidRequestError):  # at submission, before any replica
            await collect(pool, req("word " * 100, tokens=8))
        with pytest.raises(EngineError, match="malformed engine output"):
            await collect(pool, req("bad #1", tokens=8))
        assert pool.retried == 0 and all(r.state is ReplicaState.LIVE for r in pool.replicas)
        assert (await collect(pool, req("good #1", tokens=8))).text == "fine \\boxed{1}"


async def test_replicas_added_and_drained_while_requests_run(autojump_clock: object) -> None:
    a, b, c = replica(), replica(), replica()
    async with EnginePool([a, b]) as pool:
        texts: list[str] = []

        async def wave(base: int, n: int) -> None:
            texts.extend(await run_all(pool, [f"#{base + i} {LONG}" for i in range(n)]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wave, 0, 8)  # 4 on a, 4 on b
            await trio.sleep(0.02)
            added = await pool.add(c, name="late")
            assert added.state is ReplicaState.LIVE
            nursery.start_soon(wave, 100, 4)  # c is the least loaded: it takes them
            await trio.sleep(0.02)
            assert added.in_flight == 4
            a_replica = pool.replicas[0]
            assert a_replica.engine is a and a_replica.in_flight == 4
            completed_before = a.completed
            draining = trio.Event()

            async def drain() -> None:
                await pool.drain(a)
                draining.set()

            nursery.start_soon(drain)
            while a_replica.state is ReplicaState.LIVE:
                await trio.lowlevel.checkpoint()
            assert a_replica.state is ReplicaState.DRAINING
            nursery.start_soon(wave, 200, 6)  # none of these may go to a
            await draining.wait()
            assert a.completed == completed_before + 4  # it finished what it held
            assert not a.healthy and a_replica.state is ReplicaState.CLOSED
        boxed = sorted(int(t.rsplit("{", 1)[1].rstrip("}")) for t in texts)
        assert boxed == [*range(8), *range(100, 104), *range(200, 206)]
        assert [r.name for r in pool.replicas] == ["replica-2", "late"]
        assert a.completed == 4 and b.completed + c.completed == 14


async def test_leaving_early_aborts_in_the_replica(autojump_clock: object) -> None:
    engines = [replica(), replica()]
    async with EnginePool(engines) as pool:
        async with pool.open_stream(req(f"{LONG} #1", tokens=64, stream=True)) as stream:
            async for _ in stream:
                break
        assert pool.num_active == 0 and sum(e.num_active for e in engines) == 0
        assert sum(e.aborted for e in engines) == 1
        with trio.move_on_after(0.03):  # cancelled mid-way
            await collect(pool, req(f"{LONG} #2", tokens=64))
        assert sum(e.num_active for e in engines) == 0 and sum(e.aborted for e in engines) == 2


async def test_majority_vote_through_a_pool(autojump_clock: object) -> None:
    engines = [replica(), replica()]
    pool = EnginePool(engines)
    method = MajorityVote(Sampler(max_tokens=64), samples=8, early_stop=False)
    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(pool)}) as llm:
        async with trio.open_nursery() as n:
            answers: dict[int, str] = {}

            async def one(i: int) -> None:
                r = await llm.generate(f"{LONG} #{i}")
                answers[i] = r.output.details["answer"]

            for i in range(6):
                n.start_soon(one, i)
        assert answers == {i: str(i) for i in range(6)}
        assert llm.stats()["engine_requests"] == 0
    # whole votes per replica, both used
    assert sum(e.completed for e in engines) == 48 and all(e.completed % 8 == 0 for e in engines)
    assert all(e.completed for e in engines)
    assert pool.affinity_hits == 6 * 7  # every sample after the first follows its prompt


class SlowStart(SimulatedEngine):
    """Takes ``delay`` seconds to start (a model load), or fails after it."""

    def __init__(self, delay: float, fail: bool = False) -> None:
        super().__init__(reply)
        self.delay, self.fail, self.closed = delay, fail, False

    async def __aenter__(self) -> Self:
        await trio.sleep(self.delay)
        if self.fail:
            raise OSError("no such device")
        return await super().__aenter__()

    async def __aexit__(self, *exc: Any) -> None:  # noqa: PYI036
        self.closed = True
        await super().__aexit__(*exc)


async def test_replicas_start_together_and_a_failed_start_fails_the_pool(
    autojump_clock: object,
) -> None:
    engines = [SlowStart(10), SlowStart(10), SlowStart(5)]
    start = trio.current_time()
    async with EnginePool(engines) as pool:
        assert trio.current_time() - start == 10  # not 25: the loads overlap
        assert [r.name for r in pool.replicas] == ["replica-1", "replica-2", "replica-3"]
        assert [r.engine for r in pool.replicas] == engines
    good, bad = SlowStart(1), SlowStart(5, fail=True)
    with pytest.raises(OSError, match="no such device"):
        async with EnginePool([good, bad]):
            pytest.fail("started")  # pragma: no cover
    assert good.closed  # the replica that did start is closed again


def test_bad_configuration_is_rejected() -> None:
    for kw in ({"saturation": 0}, {"max_retries": -1}, {"affinity_entries": 0}):
        with pytest.raises(ValueError):
            EnginePool([], **kw)


async def test_two_real_openai_servers_behind_a_pool() -> None:
    """Two OpenAI-compatible servers on loopback: votes spread over both, one
    server is killed mid-run, its undelivered requests finish on the other, and the
    CLI pools comma-separated --base-url values the same way."""
    pytest.importorskip("starlette")
    import sys

    from test_engine_conformance import FRUITS, LoopbackServer

    from engine_bridge import OpenAIEngine

    servers = [LoopbackServer(), LoopbackServer()]
    try:
        engines = [OpenAIEngine(s.url, "scaffold", backoff=0.01, max_retries=1) for s in servers]
        async with EnginePool(engines) as pool:
            results = await run_all(pool, [f"question {i}" for i in range(8)])
            assert results == [FRUITS] * 8
            assert sorted(served(pool)) == [4, 4]
            texts: list[Any] = []

            async def one(i: int) -> None:
                try:
                    texts.append((await collect(pool, req(f"again {i}", tokens=32))).text)
                except EngineError as exc:
                    texts.append(exc)

            async with trio.open_nursery() as n:
                for i in range(8):
                    n.start_soon(one, i)
                servers[0].kill()  # dies with requests in flight
            assert texts.count(FRUITS) + sum(isinstance(t, EngineError) for t in texts) == 8
            assert texts.count(FRUITS) >= 4  # the other server's, and the retried ones
            assert [r.engine for r in pool.replicas] == [engines[1]]
            assert (await collect(pool, req("after"))).text == FRUITS
        cli = await trio.run_process(
            [sys.executable, "-m", "scaffold_actors.cli", "run", "q", "--engine", "openai",
             "--model", "scaffold", "--base-url", f"{servers[1].url},{servers[1].url}",
             "--method", "cot", "--json"],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert FRUITS in cli.stdout.decode()
    finally:
        for s in servers:
            s.kill()


class _FailsToClose(SimulatedEngine):
    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await super().__aexit__(*exc_info)
        finally:  # (also when the close is cancelled: the pool's body failed)
            raise RuntimeError(f"{self.label} failed to close")

    label = "engine"


def _failing(label: str) -> _FailsToClose:
    engine = _FailsToClose()
    engine.label = label
    return engine


async def test_a_replica_that_fails_to_close_is_not_lost(autojump_clock: object) -> None:
    """The engine alone raises its close error; in a pool, leaving the pool
    raises it (several: the first, the others noted), drain() raises it, and a
    body's own error keeps the close errors as notes."""
    with pytest.raises(RuntimeError, match="alone failed to close"):
        async with _failing("alone"):
            pass
    with pytest.raises(RuntimeError, match="failed to close") as caught:
        async with EnginePool([_failing("a"), SimulatedEngine(), _failing("b")]) as pool:
            text, *_ = await collect(pool, EngineRequest(SamplingParams(max_tokens=3), prompt="q"))
            assert text
    said = " ".join([str(caught.value), *caught.value.__notes__])
    assert "a failed to close" in said and "b failed to close" in said
    async with EnginePool([_failing("drained"), SimulatedEngine()]) as pool:
        first = pool._replicas[0]
        with pytest.raises(RuntimeError, match="drained failed to close"):
            await pool.drain(first)
    # (the pool's own exit had nothing left to raise)
    with pytest.raises(ValueError, match="the body") as body:
        async with EnginePool([_failing("c")]):
            raise ValueError("the body")
    assert any("c failed to close" in n for n in body.value.__notes__)
