from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

DEFAULT_REPLY = "Apples, bananas, cherries, dates, figs, grapes, kiwis, lemons, mangoes and plums."
_TOKEN = re.compile(r"\s*\S+|\s+")


@dataclass
class KvCacheConfig:
    enable_block_reuse: bool = True
    free_gpu_memory_fraction: float | None = None
    max_tokens: int | None = None


@dataclass
class SamplingParams:
    max_tokens: int = 32
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    n: int = 1
    logprobs: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be positive")
        if self.n < 1:
            raise ValueError("n must be positive")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")


@dataclass(slots=True)
class Logprob:
    logprob: float
    rank: int | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)
    finish_reason: str | None = None


class _Tokenizer:
    chat_template = "standin"

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.ids: dict[str, int] = {}

    def _id(self, piece: str) -> int:
        if piece not in self.ids:
            self.ids[piece] = len(self.pieces)
            self.pieces.append(piece)
        return self.ids[piece]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [self._id(p) for p in _TOKEN.findall(text)]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.pieces[i] for i in ids)

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
    def __init__(
        self,
        llm: LLM,
        request_id: int,
        prompt_token_ids: list[int],
        params: SamplingParams,
        streaming: bool,
    ) -> None:
        try:
            asyncio.get_running_loop()
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
        self._task = asyncio.get_running_loop().create_task(self._generate())

    @property
    def finished(self) -> bool:
        return self._done

    def aborted(self) -> bool:
        return self._aborted

    def abort(self) -> None:
        self._aborted = True
        self._task.cancel()

    async def _generate(self) -> None:
        llm, p, out = self._llm, self.sampling_params, self.outputs[0]
        pieces = _TOKEN.findall(llm.reply)
        # like a model, continue an assistant turn that already holds the reply's start
        prompt = llm.tokenizer.decode(self.prompt_token_ids)
        started = prompt.rsplit("<assistant> ", 1)[-1] if "<assistant> " in prompt else ""
        done_text = ""
        for i, piece in enumerate(pieces):
            done_text += piece
            if started and done_text == started:
                pieces = pieces[i + 1 :]
                break
        stops = [p.stop] if isinstance(p.stop, str) else list(p.stop or ())
        llm.live += 1
        try:
            for i, piece in enumerate(pieces):
                await asyncio.sleep(llm.step_s)
                token = llm.tokenizer._id(piece)
                out.token_ids.append(token)
                out.text += piece
                if p.logprobs is not None:
                    lp = -0.05 * (1 + i % 7)
                    out.logprobs.append(
                        lp
                        if p.logprobs == 0
                        else {token: Logprob(lp, 1), token + 1: Logprob(lp - 1.0, 2)}
                    )
                finish = None
                for s in stops:
                    cut = out.text.find(s)
                    if cut != -1:
                        out.text = out.text[:cut]
                        finish = "stop"
                if finish is None and i + 1 == len(pieces):
                    finish = "stop"
                if finish is None and len(out.token_ids) >= p.max_tokens:
                    finish = "length"
                if finish is not None:
                    out.finish_reason = finish
                    self._done = True
                    self._queue.put_nowait(True)
                    return
                if self._streaming:
                    self._queue.put_nowait(False)
        except asyncio.CancelledError:
            out.finish_reason = "cancelled"
            self._done = True
            self._queue.put_nowait(True)
        finally:
            llm.live -= 1

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
        _standin_reply: str = DEFAULT_REPLY,
        _standin_step_s: float = 0.001,
        **kwargs: Any,
    ) -> None:
        self.model = model
        self.kv_cache_config = kv_cache_config
        self.args = _Args(max_seq_len=max_seq_len)
        self.tokenizer = _Tokenizer()
        self.reply = _standin_reply
        self.step_s = _standin_step_s
        self.live = 0
        self.kwargs = kwargs
        self._ids = 0
        self.is_shutdown = False

    def generate_async(
        self,
        inputs: str | list[int],
        sampling_params: SamplingParams | None = None,
        streaming: bool = False,
        **kwargs: Any,
    ) -> RequestOutput:
        if self.is_shutdown:
            raise RuntimeError("LLM is shut down")
        params = sampling_params or SamplingParams()
        ids = inputs if isinstance(inputs, list) else self.tokenizer.encode(inputs)
        if len(ids) + params.max_tokens > self.args.max_seq_len:
            raise ValueError("prompt too long")
        self._ids += 1
        return RequestOutput(self, self._ids, list(ids), params, streaming)

    def shutdown(self) -> None:
        self.is_shutdown = True
