"""The LLM API stand-in (see the package docstring for what it reproduces).

Behaviours copied from TensorRT-LLM 1.x's public source
(``tensorrt_llm/sampling_params.py``, ``tensorrt_llm/executor/result.py``):

* ``SamplingParams`` is a keyword-only dataclass; ``logprobs`` is normalised with
  ``logprobs and int(logprobs)``, and only a truthy value returns logprobs
  (``return_log_probs = bool(logprobs)``): ``logprobs=0`` returns none;
  ``logprobs=k`` returns, per token, a ``{token_id: Logprob}`` dict of the top k
  with the sampled token always in it.
* ``RequestOutput.abort()`` only asks the executor to cancel
  (``executor.abort_request(id)``) and marks the result aborted; the executor drops
  the request at its next step and then sends a final response whose
  ``finish_reason`` is ``"cancelled"``.  Until then the request is active in the
  executor (``LLM.live`` counts the executor's active requests).
* Stop strings are tokenized once (``_setup``) and matched on the token ids; on a
  match the stop word's tokens are trimmed from ``token_ids`` unless
  ``include_stop_str_in_output``, ``stop_reason`` names the stop string, and the
  text is decoded from the (trimmed) token ids.
* The tokenizer may be called from several threads at once.
* KV-cache block reuse (``KvCacheConfig(enable_block_reuse=True)``, blocks of
  ``tokens_per_block`` = 32 tokens): a request's context phase reuses the
  longest chain of its prompt's full blocks already stored (at least the last
  prompt token is computed), and its own context blocks are stored for reuse
  once its context phase is over (requests in the same context step share
  nothing).  ``SamplingParams(return_perf_metrics=True)`` puts the request's
  ``request_perf_metrics.kv_cache_metrics`` (``num_reused_blocks``,
  ``num_missed_blocks``, ``num_total_allocated_blocks``,
  ``num_new_allocated_blocks``, ``kv_cache_hit_rate``) on its output.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_REPLY = "Apples, bananas, cherries, dates, figs, grapes, kiwis, lemons, mangoes and plums."
_TOKEN = re.compile(r"\s*\S+|\s+")


@dataclass
class KvCacheConfig:
    enable_block_reuse: bool = True
    free_gpu_memory_fraction: float | None = None
    max_tokens: int | None = None
    tokens_per_block: int = 32


@dataclass(slots=True, kw_only=True)
class SamplingParams:
    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    n: int = 1
    best_of: int | None = None
    use_beam_search: bool = False
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    temperature: float | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    ignore_eos: bool = False
    return_perf_metrics: bool = False
    _stop_word_ids: list[list[int]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.best_of = self.best_of or self.n
        if self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) cannot be less than n ({self.n})")
        greedy = (
            not self.use_beam_search
            and (self.top_k is None or self.top_k == 1)
            and (self.top_p is None or self.top_p == 0.0)
        )
        if self.best_of > 1 and greedy:
            raise ValueError("Greedy decoding in the LLM API does not allow multiple returns.")
        self.logprobs = self.logprobs and int(self.logprobs)
        self.prompt_logprobs = self.prompt_logprobs and int(self.prompt_logprobs)
        # checked by the C++ SamplingConfig in the real library
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be positive")
        if self.top_p is not None and not 0 <= self.top_p <= 1:
            raise ValueError("top_p must be in [0, 1]")

    def _setup(self, tokenizer: _Tokenizer) -> SamplingParams:
        if self.stop is not None:
            strs = [self.stop] if isinstance(self.stop, str) else self.stop
            self._stop_word_ids = [tokenizer.encode(s, add_special_tokens=False) for s in strs]
        return self

    def _get_stop_reasons_and_words(self) -> list[tuple[str | int, list[int]]]:
        reasons: list[str | int] = list(self.stop_token_ids or ())
        words = [[i] for i in self.stop_token_ids or ()]
        if self.stop is not None:
            reasons += [self.stop] if isinstance(self.stop, str) else list(self.stop)
            assert self._stop_word_ids is not None, "SamplingParams._setup was not called"
            words += self._stop_word_ids
        return list(zip(reasons, words, strict=True))


@dataclass(slots=True)
class Logprob:
    logprob: float
    rank: int | None = None


@dataclass
class KvCacheMetrics:
    num_total_allocated_blocks: int = 0
    num_new_allocated_blocks: int = 0
    num_reused_blocks: int = 0
    num_missed_blocks: int = 0
    kv_cache_hit_rate: float = 0.0


@dataclass
class RequestPerfMetrics:
    kv_cache_metrics: KvCacheMetrics = field(default_factory=KvCacheMetrics)


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    request_perf_metrics: RequestPerfMetrics | None = None


class _Tokenizer:
    chat_template = "standin"

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.ids: dict[str, int] = {}
        self._lock = threading.Lock()

    def _id(self, piece: str) -> int:
        with self._lock:
            if piece not in self.ids:
                self.ids[piece] = len(self.pieces)
                self.pieces.append(piece)
            return self.ids[piece]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [self._id(p) for p in _TOKEN.findall(text)]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        # a real tokenizer decodes any id of its vocabulary; the stand-in's
        # vocabulary is the words it has seen, plus the alternatives' ids it makes up
        with self._lock:
            return "".join(self.pieces[i] if i < len(self.pieces) else f"<{i}>" for i in ids)

    def apply_chat_template(
        self,
        messages: list[dict[str, str]],
        tokenize: bool = False,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> Any:
        if continue_final_message:  # the last message stays open: the model continues it
            *head, last = messages
            text = "".join(f"<{m['role']}> {m['content']}\n" for m in head)
            text += f"<{last['role']}> {last['content']}"
        else:
            text = "".join(f"<{m['role']}> {m['content']}\n" for m in messages) + (
                "<assistant>" if add_generation_prompt else ""
            )
        return self.encode(text) if tokenize else text


@dataclass
class _Args:
    max_seq_len: int = 256


class RequestOutput:
    """A request's cumulative result, fed by the (simulated) executor."""

    def __init__(
        self,
        llm: LLM,
        request_id: int,
        prompt_token_ids: list[int],
        params: SamplingParams,
        streaming: bool,
    ) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "The asyncio event loop was not present during initialization"
            ) from None
        self._llm = llm
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.sampling_params = params
        self._streaming = streaming
        self.outputs = [CompletionOutput(0)]
        self._queue: asyncio.Queue[bool] = asyncio.Queue()
        self._done = False
        self._aborted = False
        llm._active[request_id] = self
        self._task = loop.create_task(self._generate())

    @property
    def finished(self) -> bool:
        return self._done

    def aborted(self) -> bool:
        return self._aborted

    def abort(self) -> None:
        """Ask the executor to cancel; it ends the request at its next step."""
        self._llm._abort_request(self.request_id)
        self._aborted = True

    def _respond(self, final: bool) -> None:
        if final:
            self._done = True
            self._llm._active.pop(self.request_id, None)
            self._llm.finish_reasons.append(self.outputs[0].finish_reason)
        if final or self._streaming:
            self._queue.put_nowait(final)

    async def _generate(self) -> None:
        llm, p, out = self._llm, self.sampling_params, self.outputs[0]
        # like a model, continue an assistant turn that already holds the reply's start
        prompt = llm.tokenizer.decode(self.prompt_token_ids)
        # (_standin_reply may be a function of the prompt: benchmarks check answers)
        pieces = _TOKEN.findall(llm.reply(prompt) if callable(llm.reply) else llm.reply)
        started = prompt.rsplit("<assistant> ", 1)[-1] if "<assistant> " in prompt else ""
        done_text = ""
        for i, piece in enumerate(pieces):
            done_text += piece
            if started and done_text == started:
                pieces = pieces[i + 1 :]
                break
        stops = p._get_stop_reasons_and_words()
        blocks = llm._context_blocks(self.prompt_token_ids, out, p.return_perf_metrics)
        if p.ignore_eos and pieces:  # past the end of the reply, as a model past its EOS
            pieces = (pieces * (p.max_tokens // len(pieces) + 1))[: p.max_tokens]
        for i, piece in enumerate(pieces):
            await asyncio.sleep(llm.step_s)
            if i == 0:  # the context phase is over: its blocks can be reused
                llm._store_blocks(blocks)
            if self.request_id in llm._to_cancel:  # the executor drops it at this step
                llm._to_cancel.discard(self.request_id)
                out.finish_reason = "cancelled"
                self._respond(final=True)
                return
            token = llm.tokenizer._id(piece)
            out.token_ids.append(token)
            if p.logprobs:
                lp = -0.05 * (1 + i % 7)
                top = {token: Logprob(lp, 1)}
                for r in range(1, p.logprobs):
                    top[token + 1000 * r] = Logprob(lp - r, r + 1)
                out.logprobs.append(top)
            finish = None
            for reason, ids in stops:
                if out.token_ids[-len(ids) :] == ids:
                    finish, out.stop_reason = "stop", reason
                    if not p.include_stop_str_in_output:
                        out.token_ids = out.token_ids[: -len(ids)]
                    break
            if finish is None and i + 1 == len(pieces) and not p.ignore_eos:
                finish = "stop"
            if finish is None and len(out.token_ids) >= p.max_tokens:
                finish = "length"
            if p.detokenize:
                out.text = llm.tokenizer.decode(out.token_ids)
            if finish is not None:
                out.finish_reason = finish
            self._respond(final=finish is not None)
            if finish is not None:
                return

    def __aiter__(self) -> RequestOutput:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done and self._queue.empty():
            raise StopAsyncIteration
        await self._queue.get()
        return self

    async def aresult(self) -> RequestOutput:
        while not self._done:
            await self._queue.get()
        return self


class LLM:
    def __init__(
        self,
        model: str,
        kv_cache_config: KvCacheConfig | None = None,
        max_seq_len: int = 256,
        _standin_reply: str | Callable[[str], str] = DEFAULT_REPLY,
        _standin_step_s: float = 0.001,
        **kwargs: Any,
    ) -> None:
        self.model = model
        self.kv_cache_config = kv_cache_config
        self.args = _Args(max_seq_len=max_seq_len)
        self.tokenizer = _Tokenizer()
        self.reply = _standin_reply
        self.step_s = _standin_step_s
        self.kwargs = kwargs
        self._ids = 0
        self.is_shutdown = False
        #: the executor's own state: requests it holds, and cancels not yet applied
        self._active: dict[int, RequestOutput] = {}
        self._to_cancel: set[int] = set()
        self.submitted = 0
        self.streamed: list[bool] = []  # (stand-in's record) each request's ``streaming``
        #: the finish reason of each request's final response, in order
        self.finish_reasons: list[str | None] = []
        #: KV-cache blocks stored for reuse (hash chains), and the blocks reused
        self._reusable: set[int] = set()
        self.reused_blocks = 0
        self.computed_prompt_tokens = 0

    @property
    def _block_reuse(self) -> bool:
        return self.kv_cache_config is None or self.kv_cache_config.enable_block_reuse

    @property
    def _tokens_per_block(self) -> int:
        return self.kv_cache_config.tokens_per_block if self.kv_cache_config else 32

    def _context_blocks(
        self, ids: list[int], out: CompletionOutput, metrics: bool
    ) -> list[int]:
        """The context phase of a request: the blocks of ``ids`` it reuses, and
        the hash chain of its full blocks (stored once the phase is over)."""
        size = self._tokens_per_block
        chain, h = [], 0
        for start in range(0, len(ids) - size + 1, size):
            h = hash((h, *ids[start : start + size]))
            chain.append(h)
        reused = 0
        if self._block_reuse:
            for h in chain[: (len(ids) - 1) // size]:
                if h not in self._reusable:
                    break
                reused += 1
        self.reused_blocks += reused
        self.computed_prompt_tokens += len(ids) - reused * size
        if metrics:
            total = -(-len(ids) // size)
            out.request_perf_metrics = RequestPerfMetrics(
                KvCacheMetrics(
                    num_total_allocated_blocks=total,
                    num_new_allocated_blocks=total - reused,
                    num_reused_blocks=reused,
                    num_missed_blocks=total - reused,
                    kv_cache_hit_rate=reused / total if total else 0.0,
                )
            )
        return chain if self._block_reuse else []

    def _store_blocks(self, chain: list[int]) -> None:
        self._reusable.update(chain)

    @property
    def live(self) -> int:
        """Requests the executor holds (a slot and KV blocks each)."""
        return len(self._active)

    def _abort_request(self, request_id: int) -> None:
        if request_id in self._active:
            self._to_cancel.add(request_id)

    def generate_async(
        self,
        inputs: str | list[int],
        sampling_params: SamplingParams | None = None,
        streaming: bool = False,
        **kwargs: Any,
    ) -> RequestOutput:
        if self.is_shutdown:
            raise RuntimeError("LLM is shut down")
        params = (sampling_params or SamplingParams())._setup(self.tokenizer)
        ids = inputs if isinstance(inputs, list) else self.tokenizer.encode(inputs)
        if len(ids) + params.max_tokens > self.args.max_seq_len:
            raise ValueError("prompt too long")
        self._ids += 1
        self.submitted += 1
        self.streamed.append(streaming)
        return RequestOutput(self, self._ids, list(ids), params, streaming)

    def shutdown(self) -> None:
        self.is_shutdown = True
