from __future__ import annotations

import pytest
import trio
import trio.testing
from helpers import collect

from engine_bridge import (
    CostModel,
    EngineClosedError,
    EngineError,
    EngineRequest,
    InvalidRequestError,
    SamplingParams,
    SimulatedEngine,
    SimulatedOutput,
)


async def test_stream_reassembles_the_output(autojump_clock: object) -> None:
    async with SimulatedEngine("one two three four") as engine:
        text, ids, _, finish, _ = await collect(
            engine, EngineRequest(SamplingParams(), prompt="hi")
        )
        assert text == "one two three four"
        assert len(ids) == 4 and finish == "stop"
        assert engine.tokenizer.decode(ids) == text
        assert engine.num_active == 0


async def test_max_tokens_and_stop_strings(autojump_clock: object) -> None:
    async with SimulatedEngine("a b c d e f") as engine:
        text, ids, _, finish, _ = await collect(
            engine, EngineRequest(SamplingParams(max_tokens=2), prompt="p")
        )
        assert (text, finish, len(ids)) == ("a b", "length", 2)
        text, _, _, finish, _ = await collect(
            engine, EngineRequest(SamplingParams(stop=(" d",)), prompt="p")
        )
        assert (text, finish) == ("a b c", "stop")


async def test_non_streaming_request_gets_one_delta(autojump_clock: object) -> None:
    async with SimulatedEngine("x y z") as engine:
        deltas = []
        async with engine.open_stream(
            EngineRequest(SamplingParams(), prompt="p", stream=False)
        ) as s:
            async for d in s:
                deltas.append(d)
        assert len(deltas) == 1 and deltas[0].text == "x y z" and len(deltas[0].token_ids) == 3


async def test_logprobs_one_per_token(autojump_clock: object) -> None:
    out = SimulatedOutput("a b c", logprobs=[-0.1, -0.2, -0.3])
    async with SimulatedEngine(lambda call: out) as engine:
        _, ids, lps, _, _ = await collect(
            engine, EngineRequest(SamplingParams(num_logprobs=0), prompt="p")
        )
        assert lps == [-0.1, -0.2, -0.3] and len(ids) == 3
    async with SimulatedEngine("a b c") as engine:
        _, _, lps, _, _ = await collect(
            engine, EngineRequest(SamplingParams(num_logprobs=1), prompt="p")
        )
        assert len(lps) == 3 and all(-2.0 <= x <= 0.0 for x in lps)
        _, _, lps, _, _ = await collect(engine, EngineRequest(SamplingParams(), prompt="p"))
        assert lps == []


async def test_scripted_alternatives_follow_their_tokens_past_the_eos(
    autojump_clock: object,
) -> None:
    """A responder's top_logprobs are per token of its reply: cut to k, and with
    ignore_eos repeated with the reply (as the logprobs are), one set per token."""
    alts = [(("a", -0.1), ("x", -3.0), ("y", -4.0)), (("b", -0.2), ("z", -2.5))]
    out = SimulatedOutput("a b", logprobs=[-0.1, -0.2], top_logprobs=alts)
    params = SamplingParams(max_tokens=5, num_logprobs=2, ignore_eos=True)
    async with SimulatedEngine(lambda call: out) as engine:
        top = []
        async with engine.open_stream(EngineRequest(params, prompt="p")) as deltas:
            async for d in deltas:
                top += d.top_logprobs or ()
    assert [t[0][0] for t in top] == ["a", "b", "a", "b", "a"]
    assert top[0] == (("a", -0.1), ("x", -3.0)) and top[1] == alts[1]


async def test_virtual_time_follows_the_cost_model(autojump_clock: object) -> None:
    cost = CostModel(prefill_per_token=0.001, step_base=0.01, step_per_seq=0.001)
    async with SimulatedEngine("t" + " t" * 9, cost=cost) as engine:
        start = trio.current_time()
        await collect(engine, EngineRequest(SamplingParams(), prompt="one two three"))
        one = trio.current_time() - start
        assert one == pytest.approx(3 * 0.001 + 10 * 0.011)
        start = trio.current_time()
        async with trio.open_nursery() as n:
            for _ in range(8):
                n.start_soon(
                    collect, engine, EngineRequest(SamplingParams(), prompt="one two three")
                )
        eight = trio.current_time() - start
        # batched: far less than 8 sequential runs, but each step is slower
        assert one < eight < 2 * one
        assert engine.peak_batch == 8


async def test_kv_capacity_limits_admission(autojump_clock: object) -> None:
    # each request reserves 1 prompt token + 10 max tokens = 11; capacity fits 3
    async with SimulatedEngine("w " * 10, kv_capacity=33) as engine:
        async with trio.open_nursery() as n:
            for _ in range(7):
                n.start_soon(
                    collect, engine, EngineRequest(SamplingParams(max_tokens=10), prompt="p")
                )
        assert engine.peak_batch == 3 and engine.completed == 7


async def test_check_rejects_prompt_longer_than_context() -> None:
    engine = SimulatedEngine(max_context=8)
    with pytest.raises(InvalidRequestError, match="context length 8") as info:
        engine.check(EngineRequest(SamplingParams(max_tokens=4), prompt="a b c d e"))
    assert info.value.field == "prompt"
    engine.check(EngineRequest(SamplingParams(max_tokens=3), prompt="a b c d e"))


async def test_leaving_the_block_aborts_and_frees_the_slot(autojump_clock: object) -> None:
    async with SimulatedEngine("w " * 100) as engine:
        async with engine.open_stream(
            EngineRequest(SamplingParams(max_tokens=100), prompt="p")
        ) as s:
            async for _ in s:
                assert engine.num_active == 1
                break
        assert engine.num_active == 0 and engine.aborted == 1
        with trio.move_on_after(0.05):
            await collect(engine, EngineRequest(SamplingParams(max_tokens=100), prompt="p"))
        assert engine.num_active == 0 and engine.aborted == 2


async def test_a_large_step_lets_the_loop_run_between_chunks(autojump_clock: object) -> None:
    """A step that finishes many requests hands them their tokens in chunks of
    ``wakes_per_turn`` with a checkpoint between: a task woken at the same
    instant runs in between, and sees the finished count grow in stages (in
    one go, it could see at most the count before and the count after)."""
    engine = SimulatedEngine("done", cost=CostModel(0.0, 1.0, 0.0), max_batch_size=2048)
    seen: dict[float, set[int]] = {}

    async def probe() -> None:
        while engine.completed < 1000:
            await trio.sleep(1.0)  # woken with a step (1 s of virtual time) that ends now
            for _ in range(50):  # the loop's turns at this instant
                seen.setdefault(trio.current_time(), set()).add(engine.completed)
                await trio.lowlevel.checkpoint()

    async with engine, trio.open_nursery() as nursery:
        for _ in range(1000):
            nursery.start_soon(collect, engine, EngineRequest(SamplingParams(), prompt="p"))
        nursery.start_soon(probe)
    assert engine.completed == 1000 and engine.peak_batch > 2 * engine.wakes_per_turn
    assert max(len(counts) for counts in seen.values()) >= 3, seen


async def test_injected_failure_fails_live_requests_and_refuses_new(autojump_clock: object) -> None:
    async with SimulatedEngine("w " * 100) as engine:
        errors: list[BaseException] = []

        async def victim() -> None:
            try:
                await collect(engine, EngineRequest(SamplingParams(max_tokens=100), prompt="p"))
            except EngineError as e:
                errors.append(e)

        async with trio.open_nursery() as n:
            n.start_soon(victim)
            n.start_soon(victim)
            await trio.sleep(0.1)
            engine.inject_failure()
        assert len(errors) == 2 and not engine.healthy
        with pytest.raises(EngineError, match="unhealthy"):
            await collect(engine, EngineRequest(SamplingParams(), prompt="p"))
        assert engine.num_active == 0


async def test_requires_start() -> None:
    with pytest.raises(EngineClosedError):
        await collect(SimulatedEngine(), EngineRequest(SamplingParams(), prompt="p"))


def test_runs_are_deterministic(deterministic_scheduling: None) -> None:
    from conftest import reseed_trio

    async def run() -> tuple[list[str], float]:
        async with SimulatedEngine(seed=7) as engine:
            outs: list[str] = []

            async def one(i: int) -> None:
                text, *_ = await collect(engine, EngineRequest(SamplingParams(), prompt=f"q{i}"))
                outs.append(text)

            async with trio.open_nursery() as n:
                for i in range(20):
                    n.start_soon(one, i)
            return outs, trio.current_time()

    reseed_trio()
    a = trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[attr-defined]
    reseed_trio()
    b = trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[attr-defined]
    assert a == b


def test_request_validation() -> None:
    with pytest.raises(InvalidRequestError, match="exactly one"):
        EngineRequest(SamplingParams())
    with pytest.raises(InvalidRequestError, match="non-empty"):
        EngineRequest(SamplingParams(), prompt="")
    with pytest.raises(InvalidRequestError, match="messages"):
        EngineRequest(SamplingParams(), messages=[{"role": "user"}])


class Reader:
    """A started stream's consumer, as the runtime's is: it reads in ``on_wake``
    (called from the engine's own task) and closes the stream when it is over."""

    def __init__(self, engine: SimulatedEngine, request: EngineRequest, stop_after: int = 0):
        self.text, self.wakes, self.deltas = "", 0, 0
        self.finish: str | None = None
        self.error: BaseException | None = None
        self.over = trio.Event()
        self.stop_after = stop_after  # close after this many deltas (0: read to the end)
        self.stream = engine.start_stream(request, self.on_wake)

    def on_wake(self) -> None:
        self.wakes += 1
        assert not self.over.is_set(), "woken after the stream was closed"
        try:
            while (d := self.stream.next_nowait()) is not None:
                self.deltas += 1
                self.text += d.text
                self.finish = d.finish_reason
                if self.deltas == self.stop_after:
                    break
            else:
                return  # more to come
        except StopAsyncIteration:
            pass
        except EngineError as e:
            self.error = e
        self.stream.close()
        self.over.set()


async def test_a_started_stream_is_read_in_its_wake_ups(autojump_clock: object) -> None:
    async with SimulatedEngine("one two three four") as engine:
        reader = Reader(engine, EngineRequest(SamplingParams(), prompt="hi", stream=True))
        assert engine.num_active == 1  # admitted at once, no task of its own
        await reader.over.wait()
        assert (reader.text, reader.finish, reader.deltas) == ("one two three four", "stop", 4)
        assert engine.num_active == 0 and engine.completed == 1 and engine.aborted == 0
        # a request that is not streamed wakes its reader once, with the whole text
        once = Reader(engine, EngineRequest(SamplingParams(), prompt="hi", stream=False))
        await once.over.wait()
        assert (once.text, once.deltas, once.wakes) == ("one two three four", 1, 1)


async def test_closing_a_started_stream_aborts_it_at_once(autojump_clock: object) -> None:
    async with SimulatedEngine("w " * 100) as engine:
        request = EngineRequest(SamplingParams(max_tokens=100), prompt="p", stream=True)
        reader = Reader(engine, request, stop_after=3)
        await reader.over.wait()
        # closed from its wake-up, in the middle of the engine's step: released
        # before close() returned, and never woken again
        assert engine.num_active == 0 and engine.aborted == 1
        wakes = reader.wakes
        await trio.sleep(1.0)
        assert reader.wakes == wakes and reader.deltas == 3
        # closed from outside, while it runs
        other = Reader(engine, request)
        await trio.sleep(0.05)
        other.stream.close()
        assert engine.num_active == 0 and engine.aborted == 2
        with pytest.raises(StopAsyncIteration):
            other.stream.next_nowait()


async def test_a_started_stream_raises_the_engines_failure(autojump_clock: object) -> None:
    async with SimulatedEngine("w " * 100) as engine:
        request = EngineRequest(SamplingParams(max_tokens=100), prompt="p", stream=True)
        readers = [Reader(engine, request), Reader(engine, request)]
        await trio.sleep(0.1)
        engine.inject_failure()
        for reader in readers:
            await reader.over.wait()
            assert isinstance(reader.error, EngineError)
        assert engine.num_active == 0
        with pytest.raises(EngineError, match="unhealthy"):
            engine.start_stream(request, lambda: None)


async def test_start_stream_refuses_what_open_stream_refuses(autojump_clock: object) -> None:
    request = EngineRequest(SamplingParams(max_tokens=4), prompt="p")
    with pytest.raises(EngineClosedError):
        SimulatedEngine().start_stream(request, lambda: None)
    async with SimulatedEngine(max_context=4) as engine:
        with pytest.raises(InvalidRequestError) as info:
            engine.start_stream(
                EngineRequest(SamplingParams(max_tokens=4), prompt="a b c"), lambda: None
            )
        assert info.value.field == "prompt"
        assert engine.num_active == 0
