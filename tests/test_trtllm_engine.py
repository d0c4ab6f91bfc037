"""TRTLLMEngine specifics, against the tensorrt_llm API stand-in (tests/standins)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import collect

from engine_bridge import (
    AbortNotAcknowledgedWarning,
    EngineError,
    EngineRequest,
    PrefixGroup,
    SamplingParams,
    TRTLLMEngine,
)
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker
from scaffold_actors.methods import MajorityVote, Sampler

STANDINS = str(Path(__file__).parent / "standins")


def _drop_tensorrt_llm_modules() -> None:
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        del sys.modules[name]


@pytest.fixture(autouse=True)
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Import the stand-in as tensorrt_llm for one test, and forget it afterwards."""
    _drop_tensorrt_llm_modules()
    monkeypatch.syspath_prepend(STANDINS)
    yield
    _drop_tensorrt_llm_modules()


def engine(abort_timeout: float = 10.0, **kw: object) -> TRTLLMEngine:
    return TRTLLMEngine(
        "standin-model", llm_kwargs={"max_seq_len": 256, **kw}, abort_timeout=abort_timeout
    )


async def test_llm_gets_the_kv_cache_config() -> None:
    async with TRTLLMEngine(
        "m", free_gpu_memory_fraction=0.5, llm_kwargs={"max_batch_size": 8}
    ) as e:
        kv = e.llm.kv_cache_config
        assert kv.enable_block_reuse is True and kv.free_gpu_memory_fraction == 0.5
        assert e.llm.kwargs == {"max_batch_size": 8} and e.max_context == 256


async def test_sampling_params_mapping() -> None:
    async with engine() as e:
        greedy = e.sampling_params(
            EngineRequest(SamplingParams(max_tokens=5, temperature=0.0), prompt="q")
        )
        assert (greedy.max_tokens, greedy.top_k, greedy.n, greedy.logprobs) == (5, 1, 1, None)
        sp = e.sampling_params(
            EngineRequest(
                SamplingParams(
                    max_tokens=9,
                    temperature=0.7,
                    top_p=0.9,
                    top_k=20,
                    stop=("x", "y"),
                    seed=3,
                    num_logprobs=2,
                ),
                prompt="q",
            )
        )
        assert (sp.temperature, sp.top_p, sp.top_k, sp.stop, sp.seed, sp.logprobs) == (
            0.7,
            0.9,
            20,
            ["x", "y"],
            3,
            2,
        )


@pytest.mark.parametrize("stream", [True, False])
async def test_top_k_logprob_dicts_give_the_sampled_tokens_logprob_and_the_alternatives(
    stream: bool,
) -> None:
    async with engine() as e:
        lps: list[float] = []
        top: list[Any] = []
        req = EngineRequest(SamplingParams(max_tokens=4, num_logprobs=2), prompt="q", stream=stream)
        async with e.open_stream(req) as s:
            async for d in s:
                lps += d.logprobs or ()
                top += d.top_logprobs or ()
        assert lps == pytest.approx([-0.05, -0.1, -0.15, -0.2])
        # the executor's {token_id: Logprob} entries, most likely first, decoded
        assert [lp for alts in top for _, lp in alts] == pytest.approx(
            [x for lp in lps for x in (lp, lp - 1)]
        )
        assert all(alts[1][0].startswith("<") for alts in top)  # the made-up ids


async def test_cancel_calls_abort_in_the_executor() -> None:
    """Leaving mid-stream returns only once the executor itself dropped the request
    (its final "cancelled" response came): checked in the executor's own state,
    with no waiting after the block."""
    async with engine(_standin_step_s=0.01) as e:
        req = EngineRequest(SamplingParams(max_tokens=64), prompt="q")
        async with e.open_stream(req) as s:
            async for _ in s:
                assert e.llm.live == 1
                break
        assert e.llm.live == 0 and e.num_active == 0 and e.aborted == 1
        assert e.llm.finish_reasons == ["cancelled"]  # ended by the abort, not by running out


async def test_leaving_before_the_first_step_never_leaves_the_request_running() -> None:
    """A cancel that lands before the bridge loop submitted the request (or right
    after) must not leave it generating in the executor."""
    async with engine(_standin_step_s=0.01) as e:
        for _ in range(20):
            with trio.CancelScope() as scope:
                async with e.open_stream(EngineRequest(SamplingParams(max_tokens=64), prompt="q")):
                    scope.cancel()
                    await trio.lowlevel.checkpoint()
            assert e.llm.live == 0 and e.num_active == 0
        assert e.aborted == 20
        # each one either never reached the executor or was cancelled there
        assert e.llm.finish_reasons == ["cancelled"] * e.llm.submitted


async def test_an_abort_the_executor_never_confirms_is_loud(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with engine(_standin_step_s=0.1, abort_timeout=0.2) as e:
        monkeypatch.setattr(e.llm, "_abort_request", lambda request_id: None)  # lost abort
        with pytest.warns(AbortNotAcknowledgedWarning, match="did not confirm the abort"):
            async with e.open_stream(EngineRequest(SamplingParams(max_tokens=64), prompt="q")) as s:
                async for _ in s:
                    break
        assert e.abort_timeouts == 1 and e.aborted == 0
        assert e.num_active == 1 == e.llm.live  # still held, and said so
    assert e.num_active == 0  # closing the engine frees everything


async def test_logprobs_are_asked_for_never_invented() -> None:
    async with engine() as e:
        sp = e.sampling_params(EngineRequest(SamplingParams(num_logprobs=0), prompt="q"))
        assert sp.logprobs == 1  # the real API returns none for logprobs=0
        _, ids, lps, *_ = await collect(
            e, EngineRequest(SamplingParams(max_tokens=4, num_logprobs=0), prompt="q")
        )
        assert len(lps) == len(ids) == 4 and lps == pytest.approx([-0.05, -0.1, -0.15, -0.2])


async def test_missing_logprobs_are_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async with engine() as e:
        real = e.sampling_params

        def without_logprobs(request: EngineRequest) -> object:
            sp = real(request)
            sp.logprobs = None  # the engine will not return any
            return sp

        monkeypatch.setattr(e, "sampling_params", without_logprobs)
        for stream in (True, False):
            req = EngineRequest(
                SamplingParams(max_tokens=4, num_logprobs=0), prompt="q", stream=stream
            )
            with pytest.raises(EngineError, match=r"0 logprobs for [14] tokens"):
                await collect(e, req)
            assert e.llm.live == 0 and e.num_active == 0


async def test_stop_words_are_trimmed_from_token_ids() -> None:
    async with engine() as e:
        text, ids, _, finish, _ = await collect(
            e, EngineRequest(SamplingParams(max_tokens=12, stop=(" cherries,",)), prompt="q")
        )
        assert (text, finish) == ("Apples, bananas,", "stop")
        assert e.llm.tokenizer.decode(ids) == text  # the stop word's token is not in the ids


async def test_starts_again_after_a_failed_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorrt_llm

    real = tensorrt_llm.LLM
    calls = []

    def flaky(*args: object, **kw: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("no GPU memory left")
        return real(*args, **kw)

    e = engine()
    e._trt = None
    monkeypatch.setattr(tensorrt_llm, "LLM", flaky)
    with pytest.raises(RuntimeError, match="no GPU memory left"):
        async with e:
            pass
    async with e:
        text, *_ = await collect(e, EngineRequest(SamplingParams(max_tokens=3), prompt="q"))
        assert text and e.healthy


async def test_missing_tensorrt_llm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    e = TRTLLMEngine("m")
    monkeypatch.setattr(e, "module_name", "tensorrt_llm_not_installed")
    with pytest.raises(EngineError, match="needs tensorrt_llm"):
        async with e:
            pass


async def test_samples_that_sample_alike_share_one_sampling_params() -> None:
    """A vote's samples reach the executor with one SamplingParams object, as
    ``llm.generate(prompts, sampling_params)`` passes one for all; a sampling of
    its own (another seed) gets its own."""
    e = engine(_standin_reply="Two plus two is \\boxed{4}.")
    given: list[object] = []
    async with e:
        submit = e.llm.generate_async

        def recording(inputs: object, sampling_params: object = None, **kw: object) -> object:
            given.append(sampling_params)
            return submit(inputs, sampling_params=sampling_params, **kw)

        e.llm.generate_async = recording
        async with AsyncScaffoldingLlm(
            MajorityVote(Sampler(max_tokens=8), samples=4, early_stop=False),
            {"generation": EngineWorker(e, manage_engine=False)},
        ) as llm:
            await llm.generate("What is 2 + 2?")
        await collect(e, EngineRequest(SamplingParams(max_tokens=8, seed=7), prompt="q"))
    assert len(given) == 5 and len({id(p) for p in given[:4]}) == 1
    assert given[4] is not given[0] and given[4].seed == 7  # type: ignore[attr-defined]


async def test_majority_vote_through_the_runtime() -> None:
    e = engine(_standin_reply="Two plus two is \\boxed{4}.")
    async with AsyncScaffoldingLlm(
        MajorityVote(Sampler(max_tokens=16), samples=6), {"generation": EngineWorker(e)}
    ) as llm:
        r = await llm.generate("What is 2 + 2?")
        assert llm.stats()["engine_requests"] == 0
    assert r.output.details["answer"] == "4"
    assert r.output.details["samples_finished"] == 4  # early stop after 4 of 6 agree


def test_trtllm_style_trtllm_worker_on_a_given_llm_and_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TensorRT-LLM's ``TRTLLMWorker(llm, tokenizer)`` and ``init_with_new_llm``,
    unchanged, over the stand-in LLM API."""
    monkeypatch.syspath_prepend(STANDINS)
    import tensorrt_llm

    from scaffold_actors.compat import (
        MajorityVoteController,
        NativeGenerationController,
        ScaffoldingLlm,
        TRTLLMWorker,
    )

    llm = tensorrt_llm.LLM("standin-model")
    controller = MajorityVoteController(NativeGenerationController({"max_tokens": 4}), 3)
    with ScaffoldingLlm(controller, {"generation": TRTLLMWorker(llm, llm.tokenizer)}) as sl:
        assert sl.generate("q").output.output_str
    assert llm.submitted == 3 and llm.live == 0
    assert not llm.is_shutdown  # the caller's LLM: not shut down by the worker
    worker = TRTLLMWorker.init_with_new_llm("standin-model", max_batch_size=8)
    with ScaffoldingLlm(controller, {"generation": worker}) as sl:
        assert sl.generate("q").output.output_str
        owned = worker.engine.llm
        assert owned.kwargs["max_batch_size"] == 8
    assert owned.is_shutdown and worker.own_llm
    with pytest.raises(ValueError, match="exactly one of model"):
        TRTLLMWorker(None)


# --- streams started without a task (engine_bridge.StartsStreams) --------------------


def _started(e: TRTLLMEngine, max_tokens: int = 64) -> tuple[Any, trio.Event]:
    woke = trio.Event()
    stream = e.start_stream(
        EngineRequest(SamplingParams(max_tokens=max_tokens), prompt="q"), woke.set
    )
    return stream, woke


async def test_a_started_stream_is_admitted_at_once_or_not_at_all() -> None:
    """``start_stream`` takes a free slot without waiting and returns ``None``
    when none is free (nothing reaches the executor); its deltas arrive with
    ``on_wake``; at the end the slot is free again."""
    with trio.fail_after(60):  # a hang guard, not a budget (this takes milliseconds)
        await _admitted_at_once_or_not_at_all()


async def _admitted_at_once_or_not_at_all() -> None:
    async with TRTLLMEngine(
        "standin-model", max_concurrent=2, llm_kwargs={"_standin_step_s": 0.01}
    ) as e:
        (a, _), (b, _) = _started(e), _started(e)
        assert a is not None and b is not None
        assert _started(e)[0] is None and e.llm.submitted <= 2 and e.num_active == 2
        for s in (a, b):  # the slots come back once the executor confirmed the aborts
            released = trio.Event()
            s.on_wake = released.set
            s.close()
            await released.wait()
        assert e.llm.live == 0 and e.num_active == 0
        c, woke = _started(e, max_tokens=4)
        assert c is not None
        tokens = 0
        while True:
            await woke.wait()
            woke = trio.Event()
            c.on_wake = woke.set
            try:
                while (delta := c.next_nowait()) is not None:
                    tokens += len(delta.token_ids)
            except StopAsyncIteration:
                break
        assert tokens == 4 and c.released
        c.close()
        assert e.num_active == 0 and e.llm.live == 0 and e.completed == 1 and e.aborted == 2


async def test_closing_a_started_stream_aborts_it_in_the_executor_without_waiting() -> None:
    """``close()`` returns at once; the executor's own cancel response releases
    the request later, waking the stream once more (no task per request)."""
    with trio.fail_after(60):  # a hang guard
        await _closed_without_waiting()


async def _closed_without_waiting() -> None:
    async with engine(_standin_step_s=0.01) as e:
        stream, woke = _started(e)
        await woke.wait()  # the first delta
        assert e.llm.live == 1
        released = trio.Event()
        stream.on_wake = released.set
        stream.close()
        assert not stream.released  # the executor has not answered yet
        await released.wait()
        assert stream.released and e.llm.live == 0 and e.llm.finish_reasons == ["cancelled"]
        stream.close()  # forgets it
        assert e.num_active == 0 and e.aborted == 1


async def test_a_started_streams_lost_abort_is_loud_after_abort_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An abort the executor never confirms: after ``abort_timeout`` the engine's
    deadline thread warns, counts it, frees the slot and ends the stream for its
    consumer, and the request stays counted where the executor still holds it."""
    with trio.fail_after(60):  # a hang guard
        await _lost_abort(monkeypatch)


async def _lost_abort(monkeypatch: pytest.MonkeyPatch) -> None:
    async with engine(_standin_step_s=0.05, abort_timeout=0.2) as e:
        monkeypatch.setattr(e.llm, "_abort_request", lambda request_id: None)  # lost abort
        stream, woke = _started(e)
        await woke.wait()
        gave_up = trio.Event()
        stream.on_wake = gave_up.set
        with pytest.warns(AbortNotAcknowledgedWarning, match="did not confirm the abort"):
            stream.close()
            await gave_up.wait()
            while not stream.released:  # (a delta may wake it first)
                gave_up = trio.Event()
                stream.on_wake = gave_up.set
                await gave_up.wait()
        stream.close()
        assert e.abort_timeouts == 1 and e.aborted == 0
        assert e.num_active == 1 == e.llm.live  # still held, and said so
    assert e.num_active == 0  # closing the engine frees everything


async def test_runtime_generations_start_on_the_engine_and_cancel_there() -> None:
    """Through the runtime, plain generations start without runners (the engine
    counts them) up to ``max_concurrent``, the rest wait in runners; cancelling
    the request aborts every one in the executor before the cancel returns
    (without block reuse: the vote's samples are then admitted together, not
    after the first one's context phase)."""
    e = TRTLLMEngine(
        "standin-model",
        max_concurrent=3,
        enable_block_reuse=False,
        llm_kwargs={"_standin_step_s": 0.02},
    )
    vote = MajorityVote(Sampler(max_tokens=200), samples=5, early_stop=False)
    with trio.fail_after(60):  # a hang guard
        await _start_and_cancel(e, vote)
    assert e.started_streams == 3


async def _start_and_cancel(e: TRTLLMEngine, vote: MajorityVote) -> None:
    async with AsyncScaffoldingLlm(vote, {"generation": EngineWorker(e)}) as llm:
        result = await llm.generate_async("q")
        while e.llm.live < 3:  # noqa: ASYNC110 - the executor's own state has no event
            await trio.sleep(0.01)
        assert e.started_streams == 3 and e.num_active == 3  # two more wait for a slot
        await result.acancel()
        assert e.llm.live == 0 and e.num_active == 0
        assert e.llm.finish_reasons == ["cancelled"] * e.llm.submitted


LONG_PROMPT = "Reason about the question below one careful step after another. " * 12


async def _drain_together(e: TRTLLMEngine, requests: list[EngineRequest]) -> None:
    import contextlib

    async with contextlib.AsyncExitStack() as stack:
        streams = [await stack.enter_async_context(e.open_stream(r)) for r in requests]
        for stream in streams:
            async for _ in stream:
                pass


async def test_a_prefix_group_reuses_its_leaders_blocks_in_the_executor() -> None:
    """Four samples asked for together, not streamed: the first one streams
    from the executor, and the others are submitted after its context phase,
    reusing its blocks (the executor's own count).  (Without a group, whether
    requests submitted together overlap their context phases depends on the
    threads' timing: no assertion is made of it.)"""
    e = TRTLLMEngine("standin-model", llm_kwargs={"max_seq_len": 1024})
    params = SamplingParams(max_tokens=4)
    async with e:
        group = PrefixGroup(4)
        grouped = EngineRequest(params, prompt=LONG_PROMPT, stream=False, group=group)
        n = e.count_prompt_tokens(grouped)
        computed = e.llm.computed_prompt_tokens
        await _drain_together(e, [grouped] * 4)
        # the leader alone was streamed from the executor: its first response let
        # the others in while it still ran
        assert e.llm.streamed[-4:] == [True, False, False, False]
        full = (n - 1) // 32
        assert full >= 3 and e.llm.reused_blocks == 3 * full
        assert e.llm.computed_prompt_tokens - computed == 4 * n - 3 * 32 * full
        assert e.num_active == 0 == e.llm.live


async def test_cancelling_a_grouped_vote_aborts_its_members_in_the_executor() -> None:
    # replies far longer than the test: no member ends before the cancel
    e = TRTLLMEngine(
        "standin-model", llm_kwargs={"_standin_step_s": 0.02, "_standin_reply": "word " * 300}
    )
    vote = MajorityVote(Sampler(max_tokens=200), samples=5, early_stop=False)
    with trio.fail_after(60):  # a hang guard
        async with AsyncScaffoldingLlm(vote, {"generation": EngineWorker(e)}) as llm:
            result = await llm.generate_async("q")
            while e.llm.live < 5:  # noqa: ASYNC110 - the executor's own state has no event
                await trio.sleep(0.01)
            await result.acancel()
            assert e.llm.live == 0 and e.num_active == 0
    # the leader finished its context phase before the others were submitted
    assert e.llm.submitted == 5 and e.llm.reused_blocks == 0  # (a 1-block prompt)
    assert e.llm.finish_reasons == ["cancelled"] * 5
