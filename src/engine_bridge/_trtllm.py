"""TensorRT-LLM ``LLM`` API engine, behind a bridge thread with its own asyncio loop.

Targets the LLM API of TensorRT-LLM 1.x (``tensorrt_llm/llmapi/llm.py``,
``tensorrt_llm/executor/result.py``, ``tensorrt_llm/sampling_params.py``):

* ``LLM(model, kv_cache_config=KvCacheConfig(enable_block_reuse=True,
  free_gpu_memory_fraction=...), **llm_kwargs)``;
* ``llm.generate_async(inputs, sampling_params, streaming=True)`` returns a
  ``RequestOutput`` that is async-iterable (it needs a running asyncio loop, hence
  the bridge thread's own loop); ``outputs[0]`` has ``text``, ``token_ids``,
  ``logprobs`` (floats, or ``{token_id: Logprob}`` dicts for top-k) and
  ``finish_reason``; ``abort()`` cancels the request in the executor;
* ``SamplingParams(max_tokens, temperature, top_p, top_k, n, logprobs, stop, seed)``.

With block reuse on, parallel samples of one prompt share the prompt's KV blocks.
``tensorrt_llm`` is imported only when the engine starts, so this module imports
anywhere.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.to_thread

from ._bridge import BridgedEngine, RequestStream
from ._types import EngineClosedError, EngineDelta, EngineError, EngineRequest, check_context

__all__ = ["TRTLLMEngine"]


def _logprob_value(item: Any, token: int) -> float:
    if isinstance(item, dict):
        lp: Any = item.get(token)
        if lp is None:  # the sampled token is always in TensorRT-LLM's dict; be safe
            lp = max(item.values(), key=lambda x: getattr(x, "logprob", x))
        return float(getattr(lp, "logprob", lp))
    return float(item)


class _TRTRequest:
    __slots__ = (
        "emitted",
        "future",
        "n_logprobs",
        "prompt_tokens",
        "request",
        "result",
        "stream",
        "tokens",
    )

    def __init__(self, request: EngineRequest, prompt_tokens: int) -> None:
        self.request = request
        self.prompt_tokens = prompt_tokens
        self.stream = RequestStream()
        self.result: Any = None  # the RequestOutput, set in the bridge loop
        self.future: Future[None] | None = None
        self.tokens = 0
        self.emitted = 0
        self.n_logprobs = 0


class TRTLLMEngine(BridgedEngine):
    """A TensorRT-LLM model behind the :class:`~engine_bridge.Engine` protocol.

    Parameters:
        model: a model path or name, given to ``tensorrt_llm.LLM``.
        max_concurrent: requests admitted into the executor at once.
        max_context: prompt + max_tokens limit (default: the LLM's
            ``max_seq_len`` when it reports one).
        free_gpu_memory_fraction, enable_block_reuse: the ``KvCacheConfig``.
        llm_kwargs: more ``LLM(...)`` arguments (``backend``, ``tensor_parallel_size``,
            ``max_batch_size``, ``max_num_tokens`` ...).
        chat_template: render text prompts as a user message with the tokenizer's
            chat template.
    """

    module_name = "tensorrt_llm"

    def __init__(
        self,
        model: str,
        *,
        max_concurrent: int = 256,
        max_context: int | None = None,
        free_gpu_memory_fraction: float = 0.9,
        enable_block_reuse: bool = True,
        chat_template: bool = True,
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(max_concurrent)
        if not 0.0 < free_gpu_memory_fraction <= 1.0:
            raise ValueError("free_gpu_memory_fraction must be in (0, 1]")
        self.model = model
        self._max_context = max_context
        self.free_gpu_memory_fraction = free_gpu_memory_fraction
        self.enable_block_reuse = enable_block_reuse
        self.chat_template = chat_template
        self.llm_kwargs = dict(llm_kwargs or {})
        self.llm: Any = None
        self._trt: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._crash: BaseException | None = None

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
                [m.to_dict() for m in request.messages]
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
        if p.num_logprobs is not None:
            kw["logprobs"] = max(p.num_logprobs, 1) if p.num_logprobs else 0
        return self._trt.SamplingParams(**kw)

    async def __aenter__(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("TRTLLMEngine already started")
        try:
            self._trt = importlib.import_module(self.module_name)
        except ImportError as exc:
            raise EngineError(
                "TRTLLMEngine needs tensorrt_llm (pip install 'scaffold-actors[trtllm]' on an NVIDIA GPU host)"
            ) from exc
        self._start_bridge()
        ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready,), name="trtllm-bridge", daemon=True
        )
        self._thread.start()
        await anyio.to_thread.run_sync(ready.result)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close_bridge()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass
        thread = self._thread
        if thread is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(thread.join, 60)
        self._thread = None  # it can be started again

    @asynccontextmanager
    async def open_stream(
        self, request: EngineRequest
    ) -> AsyncIterator[AsyncIterator[EngineDelta]]:
        self._ensure_usable()
        self.check(request)
        prompt = self._prompt(request)
        params = self.sampling_params(request)
        prompt_tokens = (
            len(prompt) if isinstance(prompt, list) else self.count_prompt_tokens(request)
        )
        state = _TRTRequest(request, prompt_tokens)
        async with self._admit(state):
            assert self._loop is not None
            state.future = asyncio.run_coroutine_threadsafe(
                self._serve(state, prompt, params), self._loop
            )
            yield state.stream

    # -- fault injection -------------------------------------------------------
    def inject_failure(self) -> None:
        """Simulate the bridge thread dying mid-batch."""
        self._crash = EngineError("simulated TensorRT-LLM bridge thread failure")
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    # -- bridge thread -----------------------------------------------------------
    def _abort(self, key: Any, state: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def abort() -> None:
            if state.future is not None:
                state.future.cancel()
            if state.result is not None and not getattr(state.result, "finished", False):
                state.result.abort()

        try:
            loop.call_soon_threadsafe(abort)
        except RuntimeError:
            pass

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
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        trt = self._trt
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
            if shutdown is not None and self._crash is None:
                shutdown()

    async def _serve(self, state: _TRTRequest, prompt: str | list[int], params: Any) -> None:
        caller = self._caller
        assert caller is not None
        try:
            state.result = self.llm.generate_async(prompt, sampling_params=params, streaming=True)
            async for out in state.result:
                delta = self._delta(state, out)
                if delta is not None:
                    caller.call_soon(self._deliver, state, delta)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            caller.call_soon(
                state.stream.fail, EngineError(f"TensorRT-LLM request failed: {exc!r}")
            )

    def _delta(self, state: _TRTRequest, out: Any) -> EngineDelta | None:
        """Turn one cumulative RequestOutput step into a delta (bridge thread)."""
        o = out.outputs[0]
        token_ids = list(o.token_ids or ())
        new_tokens = token_ids[state.tokens :]
        finish = o.finish_reason if out.finished else None
        if finish == "cancelled":
            return None
        if finish == "timeout":
            finish = "length"
        if not new_tokens and finish is None:
            return None
        text = o.text or ""
        logprobs: tuple[float, ...] | None = None
        if state.request.params.num_logprobs is not None:
            lps = list(o.logprobs or ())
            logprobs = tuple(
                _logprob_value(lps[i], token_ids[i]) if i < len(lps) else 0.0
                for i in range(state.tokens, len(token_ids))
            )
        if not state.request.stream and finish is None:
            return None
        if state.request.stream:
            delta = EngineDelta(
                text[state.emitted :], tuple(new_tokens), logprobs, finish, state.prompt_tokens
            )
            state.tokens = len(token_ids)
            state.emitted = len(text)
        else:
            all_lps = None
            if state.request.params.num_logprobs is not None:
                lps = list(o.logprobs or ())
                all_lps = tuple(
                    _logprob_value(lps[i], token_ids[i])
                    for i in range(min(len(lps), len(token_ids)))
                )
            delta = EngineDelta(text, tuple(token_ids), all_lps, finish, state.prompt_tokens)
        return delta

    # -- event loop side -----------------------------------------------------------
    def _deliver(self, state: _TRTRequest, delta: EngineDelta) -> None:
        if state.stream.done:
            return  # aborted: late output dropped
        if delta.finish_reason is not None:
            self.completed += 1
        state.stream.push(delta)
