"""transformers-engine specifics with the embedded SmolLM2-135M on the CPU (few tokens).

What every engine must do is in test_engine_conformance.py."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

pytest.importorskip("transformers")  # the [hf] extra; the embedded model itself must be there

from helpers import collect

from engine_bridge import EngineRequest, HFEngine, InvalidRequestError, PrefixGroup, SamplingParams
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker, InvalidTaskError
from scaffold_actors.methods import MajorityVote, Sampler

pytestmark = pytest.mark.slow_model
GREEDY = SamplingParams(max_tokens=6, temperature=0.0)


async def test_generate_stream_logprobs_and_greedy_determinism() -> None:
    async with HFEngine() as engine:
        req = EngineRequest(
            SamplingParams(max_tokens=6, temperature=0.0, num_logprobs=0), prompt="Name a colour."
        )
        text, ids, lps, finish, _ = await collect(engine, req)
        assert finish in ("length", "stop") and 1 <= len(ids) <= 6
        assert len(lps) == len(ids) and all(x <= 0.0 for x in lps)
        assert text == engine.tokenizer.decode(ids, skip_special_tokens=True)
        again, *_ = await collect(engine, EngineRequest(GREEDY, prompt="Name a colour."))
        assert again == text  # greedy is deterministic
        chat, *_ = await collect(
            engine, EngineRequest(GREEDY, messages=[{"role": "user", "content": "Name a colour."}])
        )
        assert chat == text  # a text prompt is rendered as a user message
        assert engine.num_active == 0


async def test_bad_requests_are_rejected_before_the_engine() -> None:
    async with HFEngine(max_context=64) as engine:
        with pytest.raises(InvalidRequestError, match="context length 64"):
            engine.check(EngineRequest(SamplingParams(max_tokens=60), prompt="word " * 40))
        with pytest.raises(InvalidRequestError, match="seed"):
            engine.check(EngineRequest(SamplingParams(seed=3), prompt="hi"))
        with pytest.raises(InvalidRequestError, match="cache holds 32"):
            HFEngine(kv_cache_tokens=32).check(
                EngineRequest(SamplingParams(max_tokens=40), prompt="hi")
            )
        with pytest.raises(InvalidRequestError, match="num_logprobs"):
            engine.check(EngineRequest(SamplingParams(num_logprobs=5), prompt="hi"))
        assert engine.num_active == 0


def test_ignore_eos_needs_a_per_request_eos(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine_bridge._engines import _hf

    request = EngineRequest(SamplingParams(max_tokens=4, ignore_eos=True), prompt="hi")
    HFEngine().check(request)  # this transformers takes one
    monkeypatch.setattr(_hf, "_per_request_eos", lambda: False)  # an older one does not
    with pytest.raises(InvalidRequestError, match="ignore_eos"):
        HFEngine().check(request)
    with pytest.raises(InvalidRequestError, match="ignore_eos"):
        SamplingParams(ignore_eos=1)  # type: ignore[arg-type]


async def test_majority_vote_on_the_real_model() -> None:
    worker = EngineWorker(HFEngine(), default_params=SamplingParams(max_tokens=8))
    mv = MajorityVote(Sampler(max_tokens=8, temperature=0.8), samples=3)
    async with AsyncScaffoldingLlm(mv, {"generation": worker}, max_in_flight=2) as llm:
        results = await llm.generate(["What is 2 + 3?", "What is 10 - 4?"])
        with pytest.raises(InvalidTaskError, match="context length"):
            await llm.generate_async("word " * 9000)
        assert llm.stats()["engine_requests"] == 0
    for r in results:
        assert r.usage.tasks >= 2 and 0 < r.usage.completion_tokens <= 24
        assert r.output.details["samples_requested"] == 3


async def test_a_prefix_group_is_prefilled_once_in_transformers() -> None:
    """Four samples of a 2-block prompt asked for together (not streamed): the
    leader computes the prompt, the three others reuse its two full blocks, by
    transformers' own prefix search.  Without the group all four are prefilled
    in one step and share nothing."""
    prompt = "Reason about the question below carefully, one step at a time. " * 45
    async with HFEngine() as engine:
        assert engine.share_prefixes  # transformers 5.2x keeps a prefix cache
        group = PrefixGroup(4)
        request = EngineRequest(
            SamplingParams(max_tokens=2, temperature=0.7), prompt=prompt, stream=False, group=group
        )
        n = engine.count_prompt_tokens(request)
        assert 512 < n < 768
        async with contextlib.AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(engine.open_stream(request)) for _ in range(4)]
            for stream in streams:
                async for _ in stream:
                    pass
        # (5.2x recomputes the prompt's last partial block: exactly 3 x 512 reused;
        # 5.17 on the GPU host reused the whole prompt)
        assert 3 * 512 <= engine.cached_prompt_tokens <= 3 * n
        assert engine.prefill_tokens == 4 * n - engine.cached_prompt_tokens
        assert engine.num_active == 0


async def test_outputs_are_decoded_off_the_event_loop_and_progress_stays_there() -> None:
    """The bridge thread decodes what is delivered; the loop is handed an
    unstreamed request's output only at its end (and a streamed one's each
    step), never transformers' per-token progress of a request nobody reads."""
    import threading

    engine = HFEngine()
    engine.load()
    backend = engine.tokenizer.backend_tokenizer
    backend.enable_padding()  # a setting the engine's own encoding would write over
    async with engine:
        # written over once, before any output is decoded beside an encoding
        assert backend.padding is None
        loop_thread = threading.get_ident()
        decoders: list[int] = []
        decode = engine.tokenizer.decode

        def recording_decode(*args: Any, **kwargs: Any) -> Any:
            decoders.append(threading.get_ident())
            return decode(*args, **kwargs)

        handed: list[tuple[str, int]] = []
        on_output = engine._on_output

        def recording_on_output(out: Any, tokens: list[int], *rest: Any) -> None:
            handed.append((out.request_id, len(tokens)))
            on_output(out, tokens, *rest)

        engine.tokenizer.decode = recording_decode
        engine._on_output = recording_on_output  # type: ignore[method-assign]
        try:
            params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
            unstreamed = EngineRequest(params, prompt="Count: 1 2 3", stream=False)
            text, ids, *_ = await collect(engine, unstreamed)
            assert len(ids) == 6 and len(handed) == 1  # its end alone
            streamed = EngineRequest(params, prompt="Count: 1 2 3")
            again, *_ = await collect(engine, streamed)
            assert again == text and len(handed) == 1 + 6  # each of its steps
            # a group's leader streams in transformers until its prompt is
            # computed; its later steps are nobody's to read
            handed.clear()
            prompt = "Reason about the question below carefully, one step at a time. " * 45
            grouped = EngineRequest(params, prompt=prompt, stream=False, group=PrefixGroup(2))
            async with contextlib.AsyncExitStack() as stack:
                streams = [
                    await stack.enter_async_context(engine.open_stream(grouped)) for _ in range(2)
                ]
                for stream in streams:
                    deltas = [d async for d in stream]
                    assert len(deltas) == 1 and len(deltas[0].token_ids) == 6
            assert engine.cached_prompt_tokens > 0  # the member reused the leader's blocks
            assert len(handed) <= 3, handed  # each end, and the leader's first step at most
        finally:
            del engine.tokenizer.decode
        assert decoders and loop_thread not in decoders
        assert engine.num_active == 0


def test_missing_model_path_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HFEngine("/no/such/model")


class _RecordingManager:
    """Stands in for transformers' manager in the submitter tests: records calls;
    holds nothing, so a cancel is acknowledged as soon as it was sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def add_request(self, ids: list[int], request_id: str, **kw: object) -> None:
        self.calls.append(("add", request_id))

    def cancel_request(self, request_id: str) -> None:
        self.calls.append(("cancel", request_id))


class _RecordingCaller:
    def __init__(self) -> None:
        self.released: list[str] = []

    def call_soon(self, fn: object, *args: object) -> bool:
        self.released.extend(str(a) for a in args)
        return True


def _submitter(window: float = 3600.0) -> tuple[HFEngine, _RecordingManager, _RecordingCaller]:
    engine = HFEngine(
        "label",
        preloaded=(object(), object()),
        admission_window=window,
        admission_window_max=window,
    )
    manager, caller = _RecordingManager(), _RecordingCaller()
    engine._manager = manager
    engine._caller = caller  # type: ignore[assignment]
    return engine, manager, caller


def _run_submitter(engine: HFEngine, items: list[tuple[str, object, object]]) -> None:
    import threading

    for item in items:
        engine._submit_q.put(item)  # type: ignore[arg-type]
    engine._submit_q.put(("stop", None, None))
    worker = threading.Thread(target=engine._submit_loop, daemon=True)
    worker.start()
    worker.join(60)  # a hang guard: a submitter that waits out the window never ends
    assert not worker.is_alive(), "the submitter waited out its admission window"


def test_adds_gather_into_one_burst_and_a_cancel_drops_an_add_still_gathering() -> None:
    engine, manager, caller = _submitter()
    _run_submitter(
        engine,
        [("add", [1], {"request_id": f"r{i}"}) for i in range(3)] + [("cancel", "r1", None)],
    )
    assert manager.calls == [("add", "r0"), ("add", "r2")]  # r1 never reached the manager
    assert caller.released == ["r1"]  # and its cancel is acknowledged
    assert [n for _, n in engine._bursts] == [2]


def test_a_cancel_never_waits_for_the_admission_window() -> None:
    """A cancel of a request the manager already has closes the gathering burst at
    once (with an hour-long window, waiting would hang the submitter), goes out
    after the adds before it, and is acknowledged once the manager drops it."""
    engine, manager, caller = _submitter()
    _run_submitter(engine, [("add", [1], {"request_id": "r5"}), ("cancel", "r0", None)])
    assert manager.calls == [("add", "r5"), ("cancel", "r0")]
    assert caller.released == ["r0"]


def test_a_steady_trickle_is_released_after_admission_window_max(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Adds arriving every 0.1 s never leave a quiet gap of ``admission_window``
    (0.15 s): the burst they gather is still released ``admission_window_max``
    (0.3 s) after its first add.  Run on a virtual clock: the submit queue
    delivers each item at its scripted instant and a wait for it advances the
    clock, so no real time (and no machine's load) decides the outcome."""
    import queue

    from engine_bridge._engines import _hf

    clock = {"now": 0.0}
    added: list[tuple[float, str]] = []

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return clock["now"]

    class ScriptedQueue:
        """Items arriving at given virtual instants (a get waits on the clock)."""

        def __init__(self, items: list[tuple[float, Any]]) -> None:
            self.items = items

        def get(self, timeout: float | None = None) -> Any:
            at = self.items[0][0]
            if timeout is not None and at > clock["now"] + timeout:
                clock["now"] += timeout
                raise queue.Empty
            clock["now"] = max(clock["now"], at)
            return self.items.pop(0)[1]

        def get_nowait(self) -> Any:
            return self.get(0.0)

    class RecordingManager:
        def add_request(self, ids: list[int], request_id: str, **kw: object) -> None:
            added.append((clock["now"], request_id))

    monkeypatch.setattr(_hf, "time", Clock)
    engine = HFEngine(
        "label", preloaded=(object(), object()), admission_window=0.15, admission_window_max=0.3
    )
    engine._manager = RecordingManager()
    trickle = [(round(0.1 * i, 1), ("add", [1], {"request_id": f"r{i}"})) for i in range(8)]
    engine._submit_q = ScriptedQueue([*trickle, (0.8, ("stop", None, None))])  # type: ignore[assignment]
    engine._submit_loop()  # returns at the stop
    assert [rid for _, rid in added] == [f"r{i}" for i in range(8)]  # all, in order
    first_burst = [at for at, _ in added if at == added[0][0]]
    assert added[0][0] == pytest.approx(0.3)  # released at the cap, not at the trickle's end
    assert len(first_burst) == 4  # r0..r3 (r3 arrived exactly at the cap)
    assert engine._bursts[0][1] == 4 and len(engine._bursts) >= 2


def test_admission_window_max_below_the_window_is_rejected() -> None:
    with pytest.raises(ValueError, match="admission_window_max"):
        HFEngine(
            "label", preloaded=(object(), object()), admission_window=0.1, admission_window_max=0.01
        )


async def test_a_chat_turn_on_the_real_model() -> None:
    """The chat template of the embedded model renders the system and user
    messages; the reply is appended to the conversation with its token counts."""
    from scaffold_actors import ChatTask, GenerationTask, RequestContext, SystemMessage

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        chat = ChatTask.create_from_prompt("Say hello.", [SystemMessage("You are terse.")])
        chat.max_tokens = 4
        chat.temperature = 0.0
        await ctx.run(chat)
        task.output_str = chat.messages[-1].content
        task.customized_result_fields["roles"] = [m.role for m in chat.messages]
        task.customized_result_fields["tokens"] = (
            chat.prompt_tokens_num,
            chat.completion_tokens_num,
        )
        return task

    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(HFEngine())}) as llm:
        r = await llm.generate("q")
    assert r.output.details["roles"] == ["system", "user", "assistant"]
    prompt_tokens, completion_tokens = r.output.details["tokens"]
    assert prompt_tokens > 5 and 1 <= completion_tokens <= 4 and r.output.output_str


async def test_a_finished_chat_is_freed_from_transformers_prefix_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read back from transformers' own block ledger: the conversation's blocks
    past the system message's go back to the pool, the system's stay, and the
    next identical chat caches them again."""
    from engine_bridge import ChatMessage, KVCacheDrop, NotSupportedError

    system = ChatMessage("system", "You answer briefly and kindly. " * 30)  # < one 256-token page
    user = ChatMessage("user", "Please greet everyone in the room today. " * 40)
    request = EngineRequest(SamplingParams(max_tokens=2, temperature=0.0), messages=[system, user])
    async with HFEngine(max_context=2048) as engine:
        assert engine.count_prompt_tokens(EngineRequest(GREEDY, messages=[system])) < 256
        reply, *_ = await collect(engine, request)
        cached = engine.cached_blocks
        assert cached >= 2  # the prompt's full pages, kept for reuse
        drop = KVCacheDrop([system, user, ChatMessage("assistant", reply)], keep_messages=1)
        assert await engine.drop_kv_cache(drop) == cached - 1
        assert engine.cached_blocks == 1  # the system message's page
        assert await engine.drop_kv_cache(drop) == 0  # already gone
        again, *_ = await collect(engine, request)
        assert again == reply and engine.cached_blocks == cached
        manager = type(engine._manager)
        monkeypatch.setattr(manager, "pause", None)  # transformers before 5.23: no loop pause
        with pytest.raises(NotSupportedError, match=r"5\.23"):
            await engine.drop_kv_cache(drop)
        assert engine.cached_blocks == cached  # nothing was touched


async def test_the_gguf_conversion_is_cached_on_disk(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first start converts the GGUF and stores it; a later start (another
    process: the per-process memo is cleared here) reads the stored folder and
    generates exactly the same greedy tokens."""
    import os
    from pathlib import Path

    from engine_bridge._engines import _hf

    root = Path(str(tmp_path))
    monkeypatch.setenv(_hf.CACHE_ENV, str(root))
    _hf._load.cache_clear()
    request = EngineRequest(GREEDY, prompt="Name a colour.")
    async with HFEngine(seed=0) as first:
        converted = await collect(first, request)
    folder = _hf.conversion_cache_folder(first.model_path, _hf.EMBEDDED_GGUF, root)
    assert first.loaded_from == first.model_path  # converted from the GGUF
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert os.listdir(root) == [folder.name]  # no temporary left behind
    _hf._load.cache_clear()
    async with HFEngine(seed=0) as second:
        cached = await collect(second, request)
    assert second.loaded_from == str(folder)
    assert cached[:2] == converted[:2]  # same text, same token ids
    _hf._load.cache_clear()
    async with HFEngine(seed=0, conversion_cache=False) as third:
        assert third.loaded_from == third.model_path
    _hf._load.cache_clear()


def test_a_conversion_cache_that_cannot_be_written_is_a_warning(tmp_path: object) -> None:
    from pathlib import Path

    from engine_bridge._engines import _hf

    blocker = Path(str(tmp_path)) / "not-a-folder"
    blocker.write_text("a file where the cache folder should go")

    class Model:
        hf_quantizer = object()

        class config:
            quantization_config = "gguf"

        def save_pretrained(self, path: object) -> None:
            raise AssertionError("never reached: the parent cannot be made")

    model = Model()
    with pytest.warns(UserWarning, match="could not cache the converted GGUF model"):
        assert _hf._store_conversion(model, None, blocker / "x" / "model") is False
    assert model.hf_quantizer is Model.hf_quantizer  # the model is left as it was
    assert model.config.quantization_config == "gguf"


def test_the_cache_folder_changes_with_the_file(tmp_path: object) -> None:
    import os
    from pathlib import Path

    from engine_bridge._engines import _hf

    folder = Path(str(tmp_path))
    gguf = folder / "m.gguf"
    gguf.write_bytes(b"v1")
    first = _hf.conversion_cache_folder(str(folder), "m.gguf", folder / "cache")
    assert first.parent == folder / "cache" and first.name.startswith("m-")
    assert _hf.conversion_cache_folder(str(folder), "m.gguf", folder / "cache") == first
    gguf.write_bytes(b"v2 longer")
    os.utime(gguf, ns=(1, 1))
    assert _hf.conversion_cache_folder(str(folder), "m.gguf", folder / "cache") != first


def test_a_group_is_released_when_a_batch_holds_its_leaders_whole_prompt() -> None:
    """The members of a prefix group go to transformers once its scheduler has put
    the rest of the leader's prompt in a batch (it marks the leader decoding as
    it schedules it): they then join the next batch, reusing the blocks that batch
    computes, a step earlier than at the leader's first token.  A leader whose
    prompt is split over batches (still prefilling) releases nobody yet.  Read
    off transformers' own scheduler state (a stand-in scheduler here: the real
    model's reuse is the test above)."""
    from transformers.generation.continuous_batching.requests import RequestStatus

    class State:
        def __init__(self, status: Any) -> None:
            self.status = status

    class Scheduler:
        def __init__(self) -> None:
            self.active_requests: dict[str, State] = {}
            self.batches = 0

        def schedule_batch(self, token_budget: int, cache_budget: int) -> list[str]:
            self.batches += 1
            return list(self.active_requests)

    class BatchProcessor:
        scheduler = Scheduler()

    class Manager:
        batch_processor = BatchProcessor()

    engine, _, caller = _submitter()
    manager = Manager()
    engine._release_groups_when_scheduled(manager)
    scheduler = manager.batch_processor.scheduler
    engine._leaders_waiting.update({"lead": None, "other": None})
    scheduler.active_requests["lead"] = State(RequestStatus.PREFILLING)  # split: more to come
    assert scheduler.schedule_batch(8192, 64) == ["lead"] and scheduler.batches == 1
    assert caller.released == [] and "lead" in engine._leaders_waiting
    scheduler.active_requests["lead"].status = RequestStatus.DECODING  # its last chunk
    scheduler.schedule_batch(8192, 64)
    assert caller.released == ["lead"]  # the loop is told once...
    scheduler.schedule_batch(8192, 64)
    assert caller.released == ["lead"]  # ...and only once
    assert list(engine._leaders_waiting) == ["other"]  # not yet scheduled: still waiting
