"""An engine that talks to any OpenAI-compatible HTTP server (httpx, SSE)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

import anyio

from ._bridge import RequestStream, raise_single
from ._types import EngineClosedError, EngineDelta, EngineError, EngineRequest, InvalidRequestError

__all__ = ["OpenAIEngine"]

_RETRY_STATUS = {429, 500, 502, 503, 504}


class OpenAIEngine:
    """Completions and chat completions from an OpenAI-compatible server
    (trtllm-serve, vLLM, SGLang, llama.cpp, ``python -m engine_bridge.openai_server``).

    Every request streams (server-sent events), so leaving ``open_stream`` early
    closes the HTTP stream and the server aborts the generation.  Requests with
    ``messages`` (or all requests with ``chat=True``) use ``/chat/completions``.
    Connection errors, 429 and 5xx answers are retried ``max_retries`` times with
    exponential backoff (``backoff`` seconds, doubling) before any output arrived;
    a 4xx answer raises :class:`InvalidRequestError` (400/422, naming the server's
    ``param``) or :class:`EngineError`, with the server's message.  ``timeout``
    bounds each wait for data, so a stalled stream fails with :class:`EngineError`.

    A remote engine cannot count prompt tokens without the model's tokenizer, so
    ``check`` accepts everything and the server's 400 is the rejection.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        chat: bool = False,
        max_concurrent: int = 64,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        max_retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        if max_concurrent < 1 or max_retries < 0 or backoff < 0 or timeout <= 0:
            raise ValueError(
                "max_concurrent >= 1, max_retries >= 0, backoff >= 0 and timeout > 0 are required"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.chat = chat
        self.max_concurrent = max_concurrent
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self._client: Any = None
        self._slots: anyio.Semaphore | None = None
        self._active = 0
        self._unreachable: BaseException | None = None
        self.completed = 0
        self.aborted = 0

    def __repr__(self) -> str:
        return f"OpenAIEngine({self.base_url!r}, model={self.model!r})"

    @property
    def num_active(self) -> int:
        return self._active

    @property
    def healthy(self) -> bool:
        return self._client is not None and self._unreachable is None

    def check(self, request: EngineRequest) -> None:
        self.body(request)  # raises for what the server could never accept

    def count_prompt_tokens(self, request: EngineRequest) -> int:
        return 0  # unknown without the server's tokenizer

    async def __aenter__(self) -> Self:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
        )
        self._slots = anyio.Semaphore(self.max_concurrent)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    def body(self, request: EngineRequest) -> tuple[str, dict[str, Any]]:
        """The endpoint and JSON body for ``request``."""
        p = request.params
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if p.top_k:
            body["top_k"] = p.top_k
        if p.stop:
            body["stop"] = list(p.stop)
        if p.seed is not None:
            body["seed"] = p.seed
        if request.messages is not None or self.chat:
            messages = (
                [m.to_dict() for m in request.messages]
                if request.messages is not None
                else [{"role": "user", "content": request.prompt or ""}]
            )
            if request.continuation:
                # vLLM / SGLang / trtllm-serve extension: continue the assistant turn
                messages = [*messages, {"role": "assistant", "content": request.continuation}]
                body["continue_final_message"] = True
                body["add_generation_prompt"] = False
            body["messages"] = messages
            if p.num_logprobs is not None:
                body["logprobs"] = True
                body["top_logprobs"] = p.num_logprobs
            return "/chat/completions", body
        if request.prompt is not None:
            body["prompt"] = request.prompt + (request.continuation or "")
        elif request.continuation:
            raise InvalidRequestError(
                "continuation", "needs a text prompt or messages on an HTTP completions server"
            )
        else:
            body["prompt"] = list(request.prompt_token_ids or ())
        if p.num_logprobs is not None:
            body["logprobs"] = p.num_logprobs
        return "/completions", body

    async def _connect(self, path: str, body: dict[str, Any]) -> Any:
        import httpx

        attempt = 0
        while True:
            try:
                response = await self._client.send(
                    self._client.build_request("POST", path, json=body), stream=True
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                if attempt >= self.max_retries:
                    self._unreachable = exc
                    raise EngineError(f"cannot reach {self.base_url}: {exc!r}") from exc
            else:
                status = response.status_code
                if status < 400:
                    self._unreachable = None
                    return response
                text = (await response.aread()).decode("utf-8", "replace")
                await response.aclose()
                if status not in _RETRY_STATUS or attempt >= self.max_retries:
                    message, param = _error_message(text)
                    if status in (400, 422):
                        raise InvalidRequestError(
                            param or "request", f"server rejected the request: {message}"
                        )
                    raise EngineError(f"HTTP {status} from {self.base_url}{path}: {message}")
            await anyio.sleep(self.backoff * (2**attempt))
            attempt += 1

    @asynccontextmanager
    async def open_stream(
        self, request: EngineRequest
    ) -> AsyncIterator[AsyncIterator[EngineDelta]]:
        if self._client is None or self._slots is None:
            raise EngineClosedError("engine is not running (use `async with engine:`)")
        path, body = self.body(request)
        chat = path == "/chat/completions"
        async with self._slots:
            self._active += 1
            stream = RequestStream()
            try:
                response = await self._connect(path, body)
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._pump, response, chat, request, stream)
                        try:
                            yield stream
                        finally:
                            if not stream.done:
                                self.aborted += 1
                            tg.cancel_scope.cancel()  # closing the HTTP stream aborts it server-side
                except BaseExceptionGroup as group:
                    raise_single(group)
                finally:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
            finally:
                self._active -= 1

    async def _pump(
        self, response: Any, chat: bool, request: EngineRequest, stream: RequestStream
    ) -> None:
        """Read the SSE stream into ``stream`` (a task under ``open_stream``)."""
        import httpx

        pending: EngineDelta | None = None  # the finishing chunk, held until usage arrives
        counted = 0
        whole: list[EngineDelta] = []  # for stream=False requests: one delta at the end

        def push(delta: EngineDelta) -> None:
            if request.stream:
                stream.push(delta)
            else:
                whole.append(delta)

        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    message, _ = _error_message(json.dumps(chunk))
                    raise EngineError(f"server error mid-stream: {message}")
                usage = chunk.get("usage")
                for choice in chunk.get("choices") or ():
                    delta = _delta(choice, chat, request)
                    counted += delta.num_tokens
                    if pending is not None:
                        push(pending)
                        pending = None
                    if delta.finish_reason is not None:
                        pending = delta
                    elif delta.text or delta.num_tokens:
                        push(delta)
                if usage and pending is not None:
                    extra = int(usage.get("completion_tokens", counted)) - counted
                    pending = EngineDelta(
                        pending.text,
                        pending.token_ids,
                        pending.logprobs,
                        pending.finish_reason,
                        int(usage.get("prompt_tokens", 0)),
                        pending.num_tokens + max(extra, 0) if not pending.token_ids else None,
                    )
        except httpx.ReadTimeout:
            stream.fail(EngineError(f"the stream from {self.base_url} stalled for {self.timeout}s"))
            return
        except (httpx.HTTPError, json.JSONDecodeError, EngineError) as exc:
            err = (
                exc
                if isinstance(exc, EngineError)
                else EngineError(f"bad stream from {self.base_url}: {exc!r}")
            )
            if isinstance(exc, httpx.TransportError):
                self._unreachable = (
                    err  # the connection broke: unhealthy until a request gets through
                )
            stream.fail(err)
            return
        if pending is None:
            stream.fail(
                EngineError(f"the stream from {self.base_url} ended without a finish reason")
            )
            return
        self.completed += 1
        if request.stream:
            stream.push(pending)
            return
        parts = [*whole, pending]
        logprobs = None
        if request.params.num_logprobs is not None:
            logprobs = tuple(x for d in parts for x in (d.logprobs or ()))
        ids = tuple(t for d in parts for t in d.token_ids)
        stream.push(
            EngineDelta(
                "".join(d.text for d in parts),
                ids,
                logprobs,
                pending.finish_reason,
                pending.prompt_tokens,
                None if ids else sum(d.num_tokens for d in parts),
            )
        )


def _delta(choice: dict[str, Any], chat: bool, request: EngineRequest) -> EngineDelta:
    if chat:
        text = (choice.get("delta") or {}).get("content") or ""
        lp_block = choice.get("logprobs") or {}
        lps = [c.get("logprob", 0.0) for c in lp_block.get("content") or ()]
    else:
        text = choice.get("text") or ""
        lp_block = choice.get("logprobs") or {}
        lps = list(lp_block.get("token_logprobs") or ())
    ids = tuple(int(t) for t in choice.get("token_ids") or ())
    count = None if ids else (len(lps) if lps else (1 if text else 0))
    return EngineDelta(
        text,
        ids,
        tuple(float(x) for x in lps) if request.params.num_logprobs is not None else None,
        choice.get("finish_reason"),
        0,
        count,
    )


def _error_message(text: str) -> tuple[str, str | None]:
    try:
        data = json.loads(text)
        err = data.get("error", data) if isinstance(data, dict) else {}
        if isinstance(err, dict):
            return str(err.get("message") or text), err.get("param")
        return str(err), None
    except (json.JSONDecodeError, AttributeError):
        return text[:500], None
