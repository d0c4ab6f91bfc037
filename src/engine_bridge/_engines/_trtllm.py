"""TensorRT-LLM ``LLM`` API engine, behind a bridge thread with its own asyncio loop.

Targets the LLM API of TensorRT-LLM 1.x (``tensorrt_llm/llmapi/llm.py``,
``tensorrt_llm/executor/result.py``, ``tensorrt_llm/sampling_params.py``):

* ``LLM(model, kv_cache_config=KvCacheConfig(enable_block_reuse=True,
  free_gpu_memory_fraction=...), **llm_kwargs)``;
* ``llm.generate_async(inputs, sampling_params, streaming=True)`` returns a
  ``RequestOutput`` that is async-iterable (it needs a running asyncio loop, hence
  the bridge thread's own loop); ``outputs[0]`` has ``text``, ``token_ids``,
  ``logprobs`` (floats, or ``{token_id: Logprob}`` dicts for top-k) and
  ``finish_reason``; ``abort()`` asks the executor to cancel the request, which
  it ends later with a final response whose ``finish_reason`` is ``"cancelled"``;
* ``SamplingParams(max_tokens, temperature, top_p, top_k, n, logprobs, stop, seed)``.

With block reuse on, parallel samples of one prompt share the prompt's KV blocks.
``tensorrt_llm`` is imported only when the engine starts, so this module imports
anywhere.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self

from .._bridge import AsyncioBridgedEngine, RequestStream
from .._toolcalls import render_messages
from .._types import (
    EngineClosedError,
    EngineDelta,
    EngineError,
    EngineRequest,
    KVCacheDrop,
    NotSupportedError,
    TopLogprobs,
    check_context,
    stop_holdback,
)

__all__ = ["TRTLLMEngine"]


def _logprob_value(item: Any, token: int) -> float:
    """The sampled token's log probability from one step's entry: a float, or a
    ``{token_id: Logprob}`` dict (TensorRT-LLM puts the sampled token in it even when
    it is outside the top k).  A dict without the sampled token is an error: we
    never guess a value."""
    if isinstance(item, dict):
        lp: Any = item.get(token)
        if lp is None:
            raise EngineError(f"TensorRT-LLM returned logprobs without the sampled token {token}")
        return float(getattr(lp, "logprob", lp))
    return float(item)


class _TRTRequest:
    __slots__ = (
        "abort_requested",
        "emitted",
        "key",
        "prompt_tokens",
        "request",
        "result",
        "stream",
        "submission",
        "tokens",
    )

    def __init__(self, request: EngineRequest, prompt_tokens: int) -> None:
        self.request = request
        self.prompt_tokens = prompt_tokens
        self.stream = RequestStream()
        self.submission: Any = None  # (prompt, sampling params) until submitted
        self.key: Any = None
        self.result: Any = None  # the RequestOutput (bridge thread only)
        self.abort_requested = False  # bridge thread only
        self.tokens = 0
        self.emitted = 0


class TRTLLMEngine(AsyncioBridgedEngine):
    """A TensorRT-LLM model behind the :class:`~engine_bridge.Engine` protocol.

    Parameters:
        model: a model path or name, given to ``tensorrt_llm.LLM``.
        llm: instead of ``model``, an ``LLM`` the caller made (and shuts down
            itself: the engine drives it but does not shut it down).
        max_concurrent: requests admitted into the executor at once.
        max_context: prompt + max_tokens limit (default: the LLM's
            ``max_seq_len`` when it reports one).
        free_gpu_memory_fraction, enable_block_reuse: the ``KvCacheConfig``.
        llm_kwargs: more ``LLM(...)`` arguments (``backend``, ``tensor_parallel_size``,
            ``max_batch_size``, ``max_num_tokens`` ...).
        chat_template: render text prompts as a user message with the tokenizer's
            chat template.
        abort_timeout: how long leaving ``open_stream`` early waits for the
            executor's final "cancelled" response (see :class:`BridgedEngine`).

    Cancellation: leaving ``open_stream`` before the end calls
    ``RequestOutput.abort()`` in the bridge loop (or, if the request has not reached
    the executor yet, keeps it from being submitted) and returns once the executor
    has sent the request's final response, so its slot and KV blocks are free.

    Logprobs: ``num_logprobs=0`` is asked as ``logprobs=1`` (TensorRT-LLM returns
    none for 0); a response without one logprob per token is an
    :class:`EngineError`, never filled in.
    """

    module_name = "tensorrt_llm"

    def __init__(
        self,
        model: str | None = None,
        *,
        llm: Any = None,
        max_concurrent: int = 256,
        max_context: int | None = None,
        free_gpu_memory_fraction: float = 0.9,
        enable_block_reuse: bool = True,
        chat_template: bool = True,
        llm_kwargs: dict[str, Any] | None = None,
        abort_timeout: float = 10.0,
    ) -> None:
        super().__init__(max_concurrent, abort_timeout)
        if (model is None) == (llm is None):
            raise ValueError(
                "give exactly one of model (a path or name) or llm (a tensorrt_llm.LLM)"
            )
        if not 0.0 < free_gpu_memory_fraction <= 1.0:
            raise ValueError("free_gpu_memory_fraction must be in (0, 1]")
        self.model = model if model is not None else str(getattr(llm, "model", "llm"))
        self._given_llm = llm
        self._max_context = max_context
        self.free_gpu_memory_fraction = free_gpu_memory_fraction
        self.enable_block_reuse = enable_block_reuse
        # a prefix group's others wait for its leader's context phase only
        # where the executor reuses blocks
        self._share_prefixes = enable_block_reuse
        config = (llm_kwargs or {}).get("kv_cache_config")
        self._tokens_per_block = int(getattr(config, "tokens_per_block", 32))  # (its default)
        self.chat_template = chat_template
        self.llm_kwargs = dict(llm_kwargs or {})
        self.llm: Any = None
        self._trt: Any = None
        self._serving: set[asyncio.Task[None]] = set()  # requests' tasks (bridge loop only)
        # submissions for the bridge loop, and whether it was told to take them
        self._to_spawn: collections.deque[tuple[_TRTRequest, Any, Any, bool]] = collections.deque()
        self._spawn_scheduled = False
        self._crash: BaseException | None = None
        # ours -> TensorRT-LLM's SamplingParams, shared by the requests that sample alike
        self._shared_params: dict[Any, Any] = {}

    def __repr__(self) -> str:
        return f"TRTLLMEngine({self.model!r})"

    # -- Engine protocol -------------------------------------------------
    def _running(self) -> bool:
        return self.llm is not None and self._loop is not None

    @property
    def max_context(self) -> int | None:
        if self._max_context is not None:
            return self._max_context
        args = getattr(self.llm, "args", None)
        value = getattr(args, "max_seq_len", None)
        return int(value) if value else None

    def _tokenizer(self) -> Any:
        tok = getattr(self.llm, "tokenizer", None)
        if tok is None:
            raise EngineClosedError("engine is not running (use `async with engine:`)")
        return tok

    def _prompt(self, request: EngineRequest) -> str | list[int]:
        cont = request.continuation or ""
        if request.prompt_token_ids is not None:
            ids = list(request.prompt_token_ids)
            if cont:
                ids += list(self._tokenizer().encode(cont, add_special_tokens=False))
            return ids
        tok = self._tokenizer()
        if request.messages is not None or (
            self.chat_template and getattr(tok, "chat_template", None)
        ):
            messages = (
                render_messages(request.messages, request.tools)
                if request.messages is not None
                else [{"role": "user", "content": request.prompt}]
            )
            if cont:
                messages.append({"role": "assistant", "content": cont})
                return str(
                    tok.apply_chat_template(messages, tokenize=False, continue_final_message=True)
                )
            return str(
                tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
        assert request.prompt is not None
        return request.prompt + cont

    async def count_tokens(self, request: EngineRequest) -> int:
        """The prompt's token count with this engine's tokenizer."""
        return self.count_prompt_tokens(request)

    async def drop_kv_cache(self, drop: KVCacheDrop) -> int | None:
        """Always raises :class:`NotSupportedError`: TensorRT-LLM's ``LLM`` API
        has no call that releases prefix-cache blocks (its server's
        ``/_control/kv_cache/truncate`` does: reach it with :class:`OpenAIEngine`)."""
        raise NotSupportedError(
            "TensorRT-LLM's LLM API offers no KV-cache release; run trtllm-serve and use "
            "OpenAIEngine, whose hint reaches the server's /_control/kv_cache/truncate"
        )

    def count_prompt_tokens(self, request: EngineRequest) -> int:
        prompt = self._prompt(request)
        if isinstance(prompt, list):
            return len(prompt)
        return len(self._tokenizer().encode(prompt, add_special_tokens=False))

    def check(self, request: EngineRequest) -> None:
        p = request.params
        limit = self.max_context
        if limit is None or self.llm is None:
            return
        check_context(self.count_prompt_tokens(request), p.max_tokens, limit)

    def sampling_params(self, request: EngineRequest) -> Any:
        """The ``tensorrt_llm.SamplingParams`` for ``request``."""
        p = request.params
        kw: dict[str, Any] = {"max_tokens": p.max_tokens, "n": 1, "top_p": p.top_p}
        if p.temperature == 0:
            kw["top_k"] = 1  # greedy
            kw["temperature"] = 1.0
        else:
            kw["temperature"] = p.temperature
            if p.top_k > 0:
                kw["top_k"] = p.top_k
        if p.stop:
            kw["stop"] = list(p.stop)
        if p.seed is not None:
            kw["seed"] = p.seed
        if p.ignore_eos:
            kw["ignore_eos"] = True
        if p.num_logprobs is not None:
            # TensorRT-LLM returns no logprobs for logprobs=0; k >= 1 gives the top k
            # and the sampled token, which is what num_logprobs=0 needs
            kw["logprobs"] = max(p.num_logprobs, 1)
        return self._trt.SamplingParams(**kw)

    async def __aenter__(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("TRTLLMEngine already started")
        try:
            self._trt = importlib.import_module(self.module_name)
            self._shared_params.clear()  # (made by the module imported now)
        except ImportError as exc:
            raise EngineError(
                "TRTLLMEngine needs tensorrt_llm (pip install 'scaffold-actors[trtllm]' on an NVIDIA GPU host)"
            ) from exc
        try:
            await self._start_thread("trtllm-bridge")
        except BaseException:
            self.llm = None
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop_thread()

    def _prepare(self, request: EngineRequest) -> _TRTRequest:
        self._ensure_usable()
        prompt = self._prompt(request)  # rendered and counted once, then checked
        prompt_tokens = (
            len(prompt)
            if isinstance(prompt, list)
            else len(self._tokenizer().encode(prompt, add_special_tokens=False))
        )
        limit = self.max_context
        if limit is not None:
            check_context(prompt_tokens, request.params.max_tokens, limit)
        # one TensorRT-LLM SamplingParams per distinct sampling (a vote's samples
        # share theirs, as llm.generate(prompts, sampling_params) shares one):
        # 1.5 KB less per request in flight
        params = self._shared_params.get(request.params)
        if params is None:
            if len(self._shared_params) >= 256:
                self._shared_params.clear()
            params = self._shared_params[request.params] = self.sampling_params(request)
        state = _TRTRequest(request, prompt_tokens)
        state.submission = (prompt, params)
        return state

    def _submit(self, key: Any, state: Any) -> None:
        assert self._loop is not None
        state.key = key
        (prompt, params), state.submission = state.submission, None
        # queued for the bridge loop, which is woken once per burst of submissions
        # (a wake-up is a write to its self-pipe from this thread, the costliest
        # part of a submission); no concurrent.futures.Future per request, which
        # nobody would read: the stream carries the outcome
        # a prefix group's leader streams from the executor: its first response
        # (its prompt computed, the blocks reusable) lets the group's others in
        self._to_spawn.append((state, prompt, params, state.stream._leads is not None))
        if not self._spawn_scheduled:
            self._spawn_scheduled = True
            self._loop.call_soon_threadsafe(self._spawn)

    def _spawn(self) -> None:
        """Bridge loop: serve each queued request in a task of its own (kept
        referenced until it ends, as the loop holds tasks only weakly:
        :meth:`_serve` lets go of it)."""
        self._spawn_scheduled = False  # (first: a submission from now on wakes us again)
        queued, create = self._to_spawn, asyncio.get_running_loop().create_task
        while queued:
            state, prompt, params, leads = queued.popleft()
            self._serving.add(create(self._serve(state, prompt, params, leads)))

    def _sharable(self, state: Any) -> bool:
        return bool(state.prompt_tokens > self._tokens_per_block)

    # -- fault injection -------------------------------------------------------
    def inject_failure(self) -> None:
        """Simulate the bridge thread dying mid-batch."""
        self._crash = EngineError("simulated TensorRT-LLM bridge thread failure")
        self._stop_loop()  # (a loop already stopped, by an earlier call, is left alone)

    # -- bridge thread -----------------------------------------------------------
    def _abort(self, key: Any, state: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            self._release(key)  # the executor is gone with its loop
            return

        def abort() -> None:  # bridge thread
            state.abort_requested = True
            result = state.result
            if result is not None and not result.finished:
                result.abort()  # the executor ends it with a final "cancelled" response

        try:
            loop.call_soon_threadsafe(abort)
        except RuntimeError:
            self._release(key)

    def _thread_main(self, ready: Future[None]) -> None:
        try:
            asyncio.run(self._amain(ready))
            if self._crash is not None:
                raise self._crash
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
                return
            if not self._closed and self._caller is not None:
                err = (
                    exc
                    if isinstance(exc, EngineError)
                    else EngineError(f"engine thread died: {exc!r}")
                )
                self._caller.call_soon(self._on_failure, err)

    async def _amain(self, ready: Future[None]) -> None:
        self._serving = set()
        self._to_spawn.clear()  # (a loop before this one may have left some: failed)
        self._spawn_scheduled = False
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        trt = self._trt
        if self._given_llm is not None:
            self.llm = self._given_llm  # the caller's: not shut down here
        else:
            kv = trt.llmapi.KvCacheConfig(
                enable_block_reuse=self.enable_block_reuse,
                free_gpu_memory_fraction=self.free_gpu_memory_fraction,
            )
            self.llm = trt.LLM(model=self.model, kv_cache_config=kv, **self.llm_kwargs)
        ready.set_result(None)
        try:
            await self._stop.wait()
        finally:
            shutdown = getattr(self.llm, "shutdown", None)
            if shutdown is not None and self._crash is None and self._given_llm is None:
                shutdown()

    async def _serve(
        self, state: _TRTRequest, prompt: str | list[int], params: Any, leads: bool = False
    ) -> None:
        """Bridge loop: submit one request and relay its outputs until the executor's
        final response.  An abort (requested before or after submission) is sent to
        the executor, and the request counts as released only once the executor's
        final response came (or it was never submitted)."""
        caller = self._caller
        assert caller is not None
        try:
            if state.abort_requested:
                return  # left before it reached the executor
            # streamed only when the caller streams: otherwise the executor's final
            # response alone crosses to the event loop (stop words are the
            # executor's own; an abort still ends it with a "cancelled" response)
            result = state.result = self.llm.generate_async(
                prompt, sampling_params=params, streaming=state.request.stream or leads
            )
            failed = False
            async for out in result:
                if leads:
                    leads = False
                    caller.call_soon(state.stream.prefilled)
                if state.abort_requested or failed:
                    continue  # draining until the executor's final response
                try:
                    delta = self._delta(state, out)
                except EngineError as exc:
                    failed = True
                    caller.call_soon(state.stream.fail, exc)
                    if not result.finished:
                        result.abort()
                    continue
                if delta is not None:
                    caller.call_soon(self._deliver, state, delta)
        except asyncio.CancelledError:
            raise  # the bridge loop is shutting down (the engine closes)
        except BaseException as exc:
            caller.call_soon(
                state.stream.fail, EngineError(f"TensorRT-LLM request failed: {exc!r}")
            )
        finally:
            caller.call_soon(self._release, state.key)
            self._serving.discard(asyncio.current_task())

    def _delta(self, state: _TRTRequest, out: Any) -> EngineDelta | None:
        """Turn one cumulative RequestOutput step into a delta (bridge thread).

        Raises :class:`EngineError` when logprobs were asked for and the engine did
        not return one per token."""
        o = out.outputs[0]
        token_ids = list(o.token_ids or ())
        finish = o.finish_reason if out.finished else None
        if finish == "cancelled":
            return None
        if finish == "timeout":
            finish = "length"
        params = state.request.params
        if not state.request.stream:
            if finish is None:
                return None
            lps = self._logprobs(state, o, token_ids, 0)
            return EngineDelta(
                o.text or "",
                tuple(token_ids),
                lps,
                finish,
                state.prompt_tokens,
                top_logprobs=self._top(state, o, token_ids, 0),
            )
        new_tokens = token_ids[state.tokens :]
        if not new_tokens and finish is None:
            return None
        text = o.text or ""
        # text that may be the start of a stop string waits for the next step
        end = len(text) if finish is not None else len(text) - stop_holdback(text, params.stop)
        lps = self._logprobs(state, o, token_ids, state.tokens)
        delta = EngineDelta(
            text[state.emitted : end] if end > state.emitted else "",
            tuple(new_tokens),
            lps,
            finish,
            state.prompt_tokens,
            top_logprobs=self._top(state, o, token_ids, state.tokens),
        )
        state.tokens = len(token_ids)
        state.emitted = max(state.emitted, end)
        return delta

    @staticmethod
    def _logprobs(
        state: _TRTRequest, o: Any, token_ids: list[int], start: int
    ) -> tuple[float, ...] | None:
        if state.request.params.num_logprobs is None:
            return None
        lps = list(o.logprobs or ())
        if len(lps) < len(token_ids):
            raise EngineError(
                f"TensorRT-LLM returned {len(lps)} logprobs for {len(token_ids)} tokens"
            )
        return tuple(_logprob_value(lps[i], token_ids[i]) for i in range(start, len(token_ids)))

    def _top(
        self, state: _TRTRequest, o: Any, token_ids: list[int], start: int
    ) -> tuple[TopLogprobs, ...] | None:
        """Each new token's ``num_logprobs`` most likely alternatives from
        TensorRT-LLM's ``{token_id: Logprob}`` entries (which also hold the
        sampled token when it is outside the top k: the k most likely are kept),
        decoded with the engine's tokenizer.  ``None`` unless ``num_logprobs > 0``
        and the entries are dicts."""
        k = state.request.params.num_logprobs or 0
        entries = list(o.logprobs or ())[start : len(token_ids)]
        if not k or not entries or not all(isinstance(e, dict) for e in entries):
            return None
        tok = self._tokenizer()
        top: list[TopLogprobs] = []
        for entry in entries:
            values = sorted(
                ((tid, float(getattr(lp, "logprob", lp))) for tid, lp in entry.items()),
                key=lambda item: -item[1],
            )[:k]
            top.append(tuple((str(tok.decode([tid])), lp) for tid, lp in values))
        return tuple(top)

    # -- event loop side -----------------------------------------------------------
    def _deliver(self, state: _TRTRequest, delta: EngineDelta) -> None:
        if state.stream.done:
            return  # aborted: late output dropped
        if delta.finish_reason is not None:
            self.completed += 1
        state.stream.push(delta)  # a final delta: the executor sent its final response
