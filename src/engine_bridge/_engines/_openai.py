"""An engine that talks to any OpenAI-compatible HTTP server (httpx, SSE)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

import anyio
import attrs

from .._bridge import RequestStream, raise_single
from .._prefix import PrefixGate
from .._toolcalls import FunctionCall, ToolCall
from .._types import (
    EngineClosedError,
    EngineDelta,
    EngineError,
    EngineRequest,
    InvalidRequestError,
    KVCacheDrop,
    NotSupportedError,
    PrefixGroup,
    TopLogprobs,
    first_stop,
    stop_holdback,
)

__all__ = ["OpenAIEngine"]

_RETRY_STATUS = {429, 500, 502, 503, 504}
# connections per httpx client: httpcore's pool scans its connections (quadratically)
# on every request and every release (encode/httpcore#1035), so one pool of 512
# connections cost a batching server's client ~11 ms of CPU per request; shards of 8
# cost ~0.9 ms (benchmarks/http_client.py: 4 and 8 are alike, 32 costs 2.6 ms)
_SHARD = 8


class OpenAIEngine:
    """Completions and chat completions from an OpenAI-compatible server
    (trtllm-serve, vLLM, SGLang, llama.cpp, ``python -m engine_bridge.openai_server``).

    A streaming request (``request.stream``) streams over server-sent events; a
    request with ``stream=False`` is sent with ``"stream": false`` and answered in
    one JSON body, so neither the server nor this process handles a message per
    token (``stream_all=True`` streams every request instead).  Either way, leaving
    ``open_stream`` early closes the connection and the server aborts the
    generation (this package's server, vLLM and trtllm-serve watch for it).
    Requests with ``messages`` (or all requests with ``chat=True``) use
    ``/chat/completions``.

    Connection errors, 429 and 5xx answers are retried ``max_retries`` times with
    exponential backoff (``backoff`` seconds, doubling) before any output arrived;
    a 4xx answer raises :class:`InvalidRequestError` (400/422, naming the server's
    ``param``) or :class:`EngineError`, with the server's message.  ``timeout``
    bounds each wait for data of a stream: a stream that stalls that long, or whose
    connection breaks, is opened again (same retries and backoff) while none of its
    output has reached the consumer, and otherwise fails with :class:`EngineError`.
    A one-body answer has no data until the generation ends, so its wait is bounded
    by ``response_timeout`` instead (``None``: no bound), and a connection broken or
    timed out before the answer is retried the same way.

    At most ``max_concurrent`` requests are open at once, each on a connection of
    its own; more block (cancellably) in ``open_stream`` until one ends.

    A :class:`PrefixGroup`'s members are sent after its first one's first
    streamed chunk (the server has computed the prompt: its prefix cache then
    serves the others; the first one is streamed for it even when its caller
    does not stream); they wait, cancellably, in ``open_stream``.
    ``share_prefixes=False`` sends them as they come (a server without a
    prefix cache).

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
        stream_all: bool = False,
        response_timeout: float | None = 600.0,
        share_prefixes: bool = True,
    ) -> None:
        if max_concurrent < 1 or max_retries < 0 or backoff < 0 or timeout <= 0:
            raise ValueError(
                "max_concurrent >= 1, max_retries >= 0, backoff >= 0 and timeout > 0 are required"
            )
        if response_timeout is not None and response_timeout <= 0:
            raise ValueError("response_timeout must be > 0 or None")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.chat = chat
        self.max_concurrent = max_concurrent
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.stream_all = stream_all
        self.response_timeout = response_timeout
        self.share_prefixes = share_prefixes
        self._gate: PrefixGate[_Member] = PrefixGate(_Member.go_ahead)
        self._clients: list[Any] = []  # shards of the connection pool, while running
        self._shard_load: list[int] = []
        self._slots: anyio.Semaphore | None = None
        self._active = 0
        self._unreachable: BaseException | None = None
        self.completed = 0
        self.aborted = 0
        self.retried = 0  # requests sent again after a stall, a timeout or a transport error

    def __repr__(self) -> str:
        return f"OpenAIEngine({self.base_url!r}, model={self.model!r})"

    @property
    def num_active(self) -> int:
        return self._active

    @property
    def healthy(self) -> bool:
        return bool(self._clients) and self._unreachable is None

    def check(self, request: EngineRequest) -> None:
        self.body(request)  # raises for what the server could never accept

    def count_prompt_tokens(self, request: EngineRequest) -> int:
        return 0  # unknown without the server's tokenizer: count_tokens asks it

    async def count_tokens(self, request: EngineRequest) -> int:
        """The server's own count of the prompt's tokens, from its ``/tokenize``
        (vLLM's endpoint, served by ``engine_bridge.openai_server`` too: at the
        server's root, beside ``/v1``).  Raises :class:`EngineError` when the
        server does not serve it (:class:`NotSupportedError`) or cannot be reached."""
        path, body = self.body(request)
        ask: dict[str, Any] = {"model": self.model}
        if path == "/chat/completions":
            ask["messages"] = body["messages"]
            if request.tools:
                ask["tools"] = body["tools"]
            if request.continuation:
                ask["continue_final_message"] = True
                ask["add_generation_prompt"] = False
        else:
            ask["prompt"] = body["prompt"]
        root = self._root()
        response = await self._post_root(
            "/tokenize", ask, f"{root} does not serve /tokenize, so it cannot count tokens"
        )
        count = response.json().get("count")
        if isinstance(count, bool) or not isinstance(count, int):
            raise EngineError(
                f"{root}/tokenize answered without an integer 'count': {response.text[:200]}"
            )
        return count

    async def drop_kv_cache(self, drop: KVCacheDrop) -> int | None:
        """Send the hint to the server's KV-cache control endpoint
        (``POST /_control/kv_cache/truncate`` at its root: trtllm-serve's, served
        by ``engine_bridge.openai_server`` too) with the conversation and the
        messages to retain.  Returns the server's ``freed_blocks`` when it says,
        else ``None``.  Raises :class:`NotSupportedError` when the server does not
        serve the endpoint (404) and :class:`EngineError` when it fails or cannot
        be reached."""
        body: dict[str, Any] = {
            "action": "truncate",
            "model": self.model,
            "messages": [m.to_dict() for m in drop.messages],
            "messages_to_retain": [m.to_dict() for m in drop.messages[: drop.keep_messages]],
        }
        if drop.tools:
            body["tools"] = list(drop.tools)
        path = "/_control/kv_cache/truncate"
        unsupported = f"{self._root()}{path} is not served: the server takes no KV-cache hints"
        response = await self._post_root(path, body, unsupported)
        try:
            freed = response.json().get("freed_blocks")
        except (ValueError, AttributeError):
            freed = None
        return freed if isinstance(freed, int) and not isinstance(freed, bool) else None

    async def _post_root(self, path: str, body: dict[str, Any], unsupported: str) -> Any:
        """POST ``body`` to ``path`` at the server's root (its extensions beside
        ``/v1``) and return the response.  Raises :class:`EngineClosedError` when
        the engine is not running, :class:`NotSupportedError` (``unsupported``)
        for a 404 or 501, :class:`EngineError` when the server cannot be reached
        or answers with another error."""
        import httpx

        if not self._clients:
            raise EngineClosedError("engine is not running (use `async with engine:`)")
        url = self._root() + path
        try:
            response = await self._clients[0].post(url, json=body)
        except httpx.TransportError as exc:
            raise EngineError(f"cannot reach {url}: {exc!r}") from exc
        if response.status_code in (404, 501):
            raise NotSupportedError(unsupported)
        if response.status_code >= 400:
            message, _ = _error_message(response.text)
            raise EngineError(f"HTTP {response.status_code} from {url}: {message}")
        return response

    def _root(self) -> str:
        """The server's root (``base_url`` without its ``/v1``)."""
        return self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url

    async def __aenter__(self) -> Self:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        # ``max_concurrent`` (the semaphore) is the bound: every admitted request gets
        # a connection at once (httpx's default pool of 100 held the rest back, and a
        # batching server saw them trickle in one by one as others finished)
        shards = -(-self.max_concurrent // _SHARD)
        size = -(-self.max_concurrent // shards)
        tls = httpx.create_ssl_context()  # the CA bundle loaded once, not per shard
        self._clients = [
            httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                verify=tls,
                timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout, pool=None),
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
            )
            for _ in range(shards)
        ]
        self._shard_load = [0] * shards
        self._slots = anyio.Semaphore(self.max_concurrent)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        clients, self._clients = self._clients, []
        for member in self._gate.clear():  # held back: they find the engine closed
            member.go_ahead(False)
        with anyio.CancelScope(shield=True):
            for client in clients:
                await client.aclose()

    def body(self, request: EngineRequest) -> tuple[str, dict[str, Any]]:
        """The endpoint and JSON body for ``request``."""
        p = request.params
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
        }
        if request.stream or self.stream_all:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        else:
            body["stream"] = False
        if p.top_k:
            body["top_k"] = p.top_k
        if p.stop:
            body["stop"] = list(p.stop)
        if p.seed is not None:
            body["seed"] = p.seed
        if p.ignore_eos:
            body["ignore_eos"] = True  # vLLM's and trtllm-serve's extension
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
            if request.tools:
                body["tools"] = [dict(t) for t in request.tools]
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

    async def _connect(
        self, client: Any, path: str, body: dict[str, Any], *, whole: bool = False
    ) -> Any:
        """POST ``body`` and return the response once its status is not an error:
        with its headers read (a stream), or its whole body (``whole``: a one-body
        answer, waited for at most ``response_timeout``).

        Transport errors (refused, reset, timed out, cut), 429 and 5xx are retried
        with backoff, ``max_retries`` times; then :class:`EngineError` (the engine
        is unhealthy until a request gets through, unless a one-body answer only
        took too long).  Other 4xx raise at once."""
        import httpx

        extra = {}
        if whole:
            extra["timeout"] = httpx.Timeout(self.response_timeout, connect=self.connect_timeout)
        attempt = 0
        while True:
            try:
                response = await client.send(
                    client.build_request("POST", path, json=body, **extra), stream=not whole
                )
            except RuntimeError as exc:  # httpx: "the client has been closed"
                if not client.is_closed:
                    raise
                raise EngineClosedError(f"engine closed while sending to {self.base_url}") from exc
            except httpx.TransportError as exc:
                if attempt >= self.max_retries:
                    tries = f" ({attempt + 1} attempts)" if attempt else ""
                    if whole and isinstance(exc, httpx.ReadTimeout):
                        raise EngineError(
                            f"no answer from {self.base_url} within {self.response_timeout}s{tries}"
                        ) from exc
                    self._unreachable = exc
                    raise EngineError(f"cannot reach {self.base_url}: {exc!r}{tries}") from exc
                self.retried += 1
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
        if not self._clients or self._slots is None:
            raise EngineClosedError("engine is not running (use `async with engine:`)")
        path, body = self.body(request)
        group = request.group if self.share_prefixes else None
        if group is None:
            async with self._open(request, path, body, None) as stream:
                yield stream
            return
        member = _Member()
        self._gate.enter(group, member)
        try:
            await member.go.wait()  # the group's first member, or its prompt is computed
            if member.leads and not body["stream"]:
                # streamed, so that its first chunk says the prompt is computed
                body = {**body, "stream": True, "stream_options": {"include_usage": True}}
            async with self._open(request, path, body, group if member.leads else None) as stream:
                yield stream
        finally:
            self._gate.leave(group, member)

    @asynccontextmanager
    async def _open(
        self, request: EngineRequest, path: str, body: dict[str, Any], leads: PrefixGroup | None
    ) -> AsyncIterator[RequestStream]:
        assert self._slots is not None
        async with self._slots:
            if not self._clients:  # closed while this one waited (for a slot, or its group)
                raise EngineClosedError("engine is not running (it closed)")
            self._active += 1
            # the least-loaded shard: the semaphore leaves one with a free connection
            load = self._shard_load
            shard = min(range(len(load)), key=load.__getitem__)
            load[shard] += 1
            client = self._clients[shard]
            stream = RequestStream()
            if leads is not None:  # its first chunk lets the group's others go
                stream._group, stream._leads = leads, self._gate
            response = None
            try:
                if body["stream"]:
                    # the first connection here, so a rejection raises from open_stream itself
                    response = await self._connect(client, path, body)
                try:
                    async with anyio.create_task_group() as tg:
                        if response is None:
                            tg.start_soon(self._fetch, client, path, body, request, stream)
                        else:
                            tg.start_soon(self._pump, client, response, path, body, request, stream)
                        try:
                            yield stream
                        finally:
                            if not stream.done:
                                self.aborted += 1
                            tg.cancel_scope.cancel()  # closing the connection aborts it server-side
                except BaseExceptionGroup as group:
                    raise_single(group)
                finally:
                    if response is not None:
                        with anyio.CancelScope(shield=True):
                            await response.aclose()
            finally:
                self._active -= 1
                load[shard] -= 1

    async def _fetch(
        self,
        client: Any,
        path: str,
        body: dict[str, Any],
        request: EngineRequest,
        stream: RequestStream,
    ) -> None:
        """Ask for a one-body answer (retried as ``_connect`` says) and push it as
        one delta (a task under ``open_stream``)."""
        try:
            response = await self._connect(client, path, body, whole=True)
            answer = response.json()
            [choice] = answer["choices"]
            delta = _delta(choice, path == "/chat/completions", request)
            if delta.finish_reason is None:
                raise ValueError("no finish_reason")
        except (EngineError, InvalidRequestError) as err:
            stream.fail(err)
            return
        except (ValueError, KeyError, TypeError) as exc:
            stream.fail(EngineError(f"bad answer from {self.base_url}: {exc!r}"))
            return
        state = _StreamState(request, stream)
        state.tool_fragments(choice)
        state.add(delta)
        state.usage(answer.get("usage") or {})
        state.finish()
        self.completed += 1

    async def _pump(
        self,
        client: Any,
        response: Any,
        path: str,
        body: dict[str, Any],
        request: EngineRequest,
        stream: RequestStream,
    ) -> None:
        """Read the SSE stream into ``stream`` (a task under ``open_stream``).

        A stream that stalls (no data for ``timeout`` seconds) or whose connection
        breaks is opened again, with the same backoff as ``_connect``, as long as
        nothing has reached the consumer yet (a streaming request that already
        delivered text cannot be replayed); after ``max_retries`` such attempts, or
        once output was delivered, the request fails with :class:`EngineError`.
        """
        import httpx

        attempt = 0
        while True:
            state = _StreamState(request, stream)
            try:
                try:
                    await self._read(response, path == "/chat/completions", state)
                finally:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
            except (httpx.ReadTimeout, httpx.TransportError) as exc:
                stalled = isinstance(exc, httpx.ReadTimeout)
                what = (
                    f"the stream from {self.base_url} stalled for {self.timeout}s"
                    if stalled
                    else f"the connection to {self.base_url} broke mid-stream: {exc!r}"
                )
                if state.delivered or attempt >= self.max_retries:
                    tries = f" ({attempt + 1} attempts)" if attempt else ""
                    err = EngineError(what + tries)
                    if not stalled:
                        self._unreachable = err  # unhealthy until a request gets through
                    stream.fail(err)
                    return
                self.retried += 1
                await anyio.sleep(self.backoff * (2**attempt))
                attempt += 1
                try:
                    response = await self._connect(client, path, body)
                except (EngineError, InvalidRequestError) as err:
                    stream.fail(err)
                    return
                continue
            except (httpx.HTTPError, json.JSONDecodeError, EngineError) as exc:
                stream.fail(
                    exc
                    if isinstance(exc, EngineError)
                    else EngineError(f"bad stream from {self.base_url}: {exc!r}")
                )
                return
            break
        if state.finish():
            self.completed += 1
        else:
            stream.fail(
                EngineError(f"the stream from {self.base_url} ended without a finish reason")
            )

    async def _read(self, response: Any, chat: bool, state: _StreamState) -> None:
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if state.stream._leads is not None:
                state.stream.prefilled()  # the server computed its prompt
            if "error" in chunk:
                message, _ = _error_message(json.dumps(chunk))
                raise EngineError(f"server error mid-stream: {message}")
            for choice in chunk.get("choices") or ():
                state.tool_fragments(choice)
                if not state.add(_delta(choice, chat, state.request)):
                    return  # a stop string ended it; closing the response aborts it
            usage = chunk.get("usage")
            if usage:
                state.usage(usage)


class _Member:
    """A prefix group's member waiting in ``open_stream`` to be sent."""

    __slots__ = ("go", "leads")

    def __init__(self) -> None:
        self.go = anyio.Event()
        self.leads = False

    def go_ahead(self, leads: bool) -> None:
        self.leads = leads
        self.go.set()


class _StreamState:
    """What one attempt at reading a response has gathered."""

    def __init__(self, request: EngineRequest, stream: RequestStream) -> None:
        self.request = request
        self.stream = stream
        self.pending: EngineDelta | None = None  # the finishing chunk, held until usage arrives
        self.counted = 0
        self.whole: list[EngineDelta] = []  # for stream=False requests: one delta at the end
        self.delivered = False  # something reached the consumer
        self.calls: dict[int, dict[str, Any]] = {}  # tool calls, assembled from fragments
        self.seen = ""  # the answer's text so far, for stop strings
        self.sent = 0  # characters of it handed on
        self.stopped = False  # a stop string ended it here

    def tool_fragments(self, choice: dict[str, Any]) -> None:
        """Gather the ``tool_calls`` of a chat choice: whole in a one-body answer,
        in fragments keyed by ``index`` in a stream (name first, then pieces of
        the arguments' JSON text).  Bounded: at most 64 calls of 256 KB each."""
        message = choice.get("delta") or choice.get("message") or {}
        for position, fragment in enumerate(message.get("tool_calls") or ()):
            if not isinstance(fragment, dict):
                raise EngineError(f"bad tool call from {self.request!r}: {fragment!r}")
            index = fragment.get("index", position)
            if not isinstance(index, int) or not 0 <= index < 64:
                raise EngineError(f"tool call index out of range: {index!r}")
            call = self.calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
            call["id"] = fragment.get("id") or call["id"]
            fn = fragment.get("function") or {}
            call["name"] = fn.get("name") or call["name"]
            args = fn.get("arguments")
            if isinstance(args, dict):  # some servers send an object
                args = json.dumps(args)
            if args:
                call["arguments"] += args
                if len(call["arguments"]) > 256_000:
                    raise EngineError("a tool call's arguments exceed 256 KB")

    def _with_calls(self, delta: EngineDelta) -> EngineDelta:
        if not self.calls:
            return delta
        calls = tuple(
            ToolCall(c["id"] or f"call_{i}", FunctionCall(c["name"], c["arguments"] or "{}"))
            for i, c in sorted(self.calls.items())
        )
        return attrs.evolve(delta, tool_calls=calls)

    def push(self, delta: EngineDelta) -> None:
        if self.request.stream:
            self.delivered = True
            self.stream.push(delta)
        else:
            self.whole.append(delta)

    def add(self, delta: EngineDelta) -> bool:
        """Take one delta; ``False`` once a stop string ended the answer here
        (a server that ignores ``stop``): nothing more is read."""
        if self.stopped:
            return False
        delta = self._stop(delta)
        self.counted += delta.num_tokens
        if self.pending is not None:
            self.push(self.pending)
            self.pending = None
        if delta.finish_reason is not None:
            self.pending = delta
        elif delta.text or delta.reasoning or delta.num_tokens:
            self.push(delta)
        return not self.stopped

    def _stop(self, delta: EngineDelta) -> EngineDelta:
        """Stop strings, matched on the text as it arrives, for servers that do
        not honour ``stop`` (ours, vLLM and trtllm-serve cut before we see the
        stop, so this never fires for them): the text ends before the first stop
        string, the finish reason is ``"stop"``, and text that may be the start
        of one is held back until the next delta."""
        stops = self.request.params.stop
        if not stops:
            return delta
        self.seen += delta.text
        # text before `sent` was handed on: it held no stop nor the start of one
        cut = first_stop(self.seen, stops, self.sent)
        if cut != -1:
            self.stopped = True
            text, self.sent = self.seen[self.sent : cut], cut
            return attrs.evolve(delta, text=text, finish_reason="stop")
        end = len(self.seen)
        if delta.finish_reason is None:
            end -= stop_holdback(self.seen, stops)
        text, self.sent = self.seen[self.sent : end], max(self.sent, end)
        return attrs.evolve(delta, text=text)

    def usage(self, usage: dict[str, Any]) -> None:
        pending = self.pending
        if pending is None:
            return
        extra = int(usage.get("completion_tokens", self.counted)) - self.counted
        details = usage.get("completion_tokens_details") or {}
        reasoning_tokens = details.get("reasoning_tokens") if isinstance(details, dict) else None
        self.pending = attrs.evolve(
            pending,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            token_count=pending.num_tokens + max(extra, 0) if not pending.token_ids else None,
            reasoning_tokens=int(reasoning_tokens) if isinstance(reasoning_tokens, int) else None,
        )

    def finish(self) -> bool:
        """Hand over the final delta; False if the stream never finished."""
        pending = self.pending
        if pending is None:
            return False
        pending = self._with_calls(pending)
        if self.request.stream:
            self.stream.push(pending)
            return True
        parts = [*self.whole, pending]
        logprobs = None
        top = None
        if self.request.params.num_logprobs is not None:
            logprobs = tuple(x for d in parts for x in (d.logprobs or ()))
            if all(d.top_logprobs is not None for d in parts if d.logprobs):
                top = tuple(a for d in parts for a in (d.top_logprobs or ())) or None
        ids = tuple(t for d in parts for t in d.token_ids)
        self.stream.push(
            EngineDelta(
                "".join(d.text for d in parts),
                ids,
                logprobs,
                pending.finish_reason,
                pending.prompt_tokens,
                None if ids else sum(d.num_tokens for d in parts),
                pending.tool_calls,
                "".join(d.reasoning for d in parts),
                pending.reasoning_tokens,
                top,
            )
        )
        return True


def _delta(choice: dict[str, Any], chat: bool, request: EngineRequest) -> EngineDelta:
    reasoning = ""
    top: list[TopLogprobs] = []
    if chat:
        message = choice.get("delta") or choice.get("message") or {}
        text = message.get("content") or ""
        # vLLM / SGLang / trtllm-serve reasoning parsers: apart from the answer
        reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
        lp_block = choice.get("logprobs") or {}
        entries = lp_block.get("content") or ()
        if any("logprob" not in c for c in entries):  # never filled in
            raise EngineError(f"a logprob entry without its logprob: {entries!r:.200}")
        lps = [c["logprob"] for c in entries]
        if request.params.num_logprobs:  # alternatives asked for
            top = [
                tuple(
                    (str(a.get("token", "")), float(a["logprob"]))
                    for a in c.get("top_logprobs") or ()
                )
                for c in entries
            ]
    else:
        text = choice.get("text") or ""
        lp_block = choice.get("logprobs") or {}
        lps = list(lp_block.get("token_logprobs") or ())
        if request.params.num_logprobs:
            top = [
                tuple((str(t), float(x)) for t, x in (alts or {}).items())
                for alts in lp_block.get("top_logprobs") or ()
            ]
    ids = tuple(int(t) for t in choice.get("token_ids") or ())
    if request.params.num_logprobs is not None and not lps and (text or ids):
        # never a silent gap: a server that ignores `logprobs` gives none at all
        raise EngineError(
            "the server returned no logprobs though they were asked for (it ignores "
            "the request's logprobs field); use a method that needs none"
        )
    count = None if ids else (len(lps) if lps else (1 if text or reasoning else 0))
    return EngineDelta(
        text,
        ids,
        tuple(float(x) for x in lps) if request.params.num_logprobs is not None else None,
        choice.get("finish_reason"),
        0,
        count,
        reasoning=reasoning,
        # a server that left the alternatives out gives None: "not reported", not "none"
        top_logprobs=tuple(top) if lps and any(top) else None,
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
