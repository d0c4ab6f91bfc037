"""``scaffold serve``: an OpenAI-compatible server whose models are methods.

Endpoints: ``GET /health``, ``GET /v1/models`` (one model per method),
``POST /v1/chat/completions`` and ``POST /v1/completions`` (``stream`` with
server-sent events).  ``model`` names the method; ``max_tokens`` and
``temperature`` apply to every sample of it; ``samples`` (an extension, e.g.
``extra_body={"samples": 8}``) overrides the method's sample count.  The choice
carries the method's decision in ``scaffold`` (an extension: answer, votes ...).

Guarantees: at most ``max_in_flight`` requests run, the next one gets a 429; a
request running longer than ``request_timeout`` is cancelled and gets a 504; a
client that disconnects has its request cancelled (the engine requests under it
are aborted); bodies over ``max_body_bytes`` get a 413; bad values a 400 naming
the field.  The protocol (parsing, bodies, SSE, errors) is
:mod:`engine_bridge.openai_protocol`, shared with ``engine_bridge.openai_server``.
Needs the ``server`` extra (starlette, uvicorn).
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import click

from engine_bridge import InvalidRequestError
from engine_bridge import openai_protocol as protocol
from engine_bridge.openai_protocol import CompletionRequest

from .. import (
    AsyncScaffoldingLlm,
    GenerationTask,
    RequestCancelledError,
    ScaffoldingResult,
    TooManyRequestsError,
)
from ._waiting import waiting

__all__ = ["MethodRouter", "chat_completions", "completions", "create_app", "health", "models"]

#: the access log: one line per completion request (method, status, seconds, tokens)
log = logging.getLogger("scaffold_actors.serve")
_STREAMED = -1  # tokens of a response that is a stream: not known yet


def _access(
    path: str, model: Any, status: int, started: float, tokens: int | None, stream: bool
) -> None:
    log.info(
        "%s model=%s status=%d seconds=%.3f completion_tokens=%s%s",
        path,
        model,
        status,
        time.perf_counter() - started,
        "-" if tokens is None else tokens,
        " stream" if stream else "",
    )


class MethodRouter:
    """A controller that runs the method a request names (``method=``), with the
    request's sampling overrides applied to the task."""

    def __init__(self, methods: Mapping[str, Any]) -> None:
        self.methods = dict(methods)

    async def run(
        self,
        ctx: Any,
        task: GenerationTask,
        /,
        method: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        **kwargs: Any,
    ) -> GenerationTask:
        task.max_tokens = max_tokens
        task.temperature = temperature
        out: GenerationTask = await self.methods[method].run(ctx, task, **kwargs)
        return out


def _controller_kwargs(req: CompletionRequest, methods: Mapping[str, Any]) -> dict[str, Any]:
    """The method and its overrides for a validated request; raises
    :class:`InvalidRequestError` (or a 404 for an unknown model) for what only this
    server refuses."""
    if req.model not in methods:
        raise protocol.HTTPError(
            404,
            f"unknown model {req.model!r}; the models are methods: {', '.join(methods)}",
            "model",
            "model_not_found",
        )
    if not req.chat and not isinstance(req.prompt, str):
        raise InvalidRequestError("prompt", "must be a non-empty string (methods read text)")
    # the question must say something: the rule of `scaffold run` too
    if not req.chat and not str(req.prompt).strip():
        raise InvalidRequestError("prompt", "must not be empty")
    if req.chat:
        users = [m for m in req.messages or () if m.get("role") == "user"]
        if not users or not str(users[-1].get("content") or "").strip():
            raise InvalidRequestError("messages", "the last user message must not be empty")
    kwargs: dict[str, Any] = {"method": req.model}
    if req.max_tokens is not None:
        kwargs["max_tokens"] = req.max_tokens
    if req.temperature is not None:
        kwargs["temperature"] = req.temperature
    samples = req.body.get("samples")
    if samples is not None:
        if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= 256:
            raise InvalidRequestError(
                "samples", f"must be an integer from 1 to 256, got {samples!r}"
            )
        kwargs["samples"] = samples
    return kwargs


def _answer(meta: protocol.ResponseMeta, result: ScaffoldingResult) -> dict[str, Any]:
    out = result.output
    assert out is not None  # a finished result without an error has its output
    finish = "length" if out.finish_reason == "length" else "stop"
    choice = protocol.choice(
        meta.chat, out.output_str or "", finish, extra={"scaffold": dict(out.details)}
    )
    u = result.usage
    return meta.completion([choice], protocol.usage(u.prompt_tokens, u.completion_tokens))


def _failure(exc: BaseException, chat: bool) -> Any:
    if isinstance(exc, RequestCancelledError):
        return protocol.error_response(503, str(exc), kind="cancelled")
    if isinstance(exc, InvalidRequestError):
        exc = _request_error(exc, chat)
    return protocol.error_for(exc)


def _request_error(exc: InvalidRequestError, chat: bool) -> InvalidRequestError:
    """A task's refusal (``GenerationTask.max_tokens``) as the refusal of the
    request's own field (``max_tokens``; the prompt is ``prompt`` or ``messages``)."""
    if "." not in exc.field:
        return exc
    name = exc.field.rsplit(".", 1)[1]
    if name in ("input_str", "prompt", "messages", "input_tokens"):
        name = "messages" if chat else "prompt"
    return InvalidRequestError(name, exc.reason)


@asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    state = app.state
    router = MethodRouter(state.methods)
    async with AsyncExitStack() as stack:
        with waiting("starting the engine (requests are answered once it is up)", quiet=False):
            llm = await stack.enter_async_context(
                AsyncScaffoldingLlm(router, state.workers, max_in_flight=state.max_in_flight)
            )
        click.echo("engine ready", err=True)
        state.llm = llm
        # what is alive now (an engine's model, its libraries) lives as long as the
        # server: the collector leaves it out of its walks, each of which stops
        # every thread (a full one took 0.23 s with the embedded model, 0.05 s so)
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()  # (an app run in a process that goes on: a test)


async def health(request: Any) -> Any:
    """``GET /health``: 200 with the runtime's live counts (:meth:`stats`), 503
    when a worker is unhealthy."""
    from starlette.responses import JSONResponse

    llm: AsyncScaffoldingLlm = request.app.state.llm
    healthy = llm.healthy()
    ok = all(healthy.values())
    return JSONResponse(
        {"status": "ok" if ok else "unhealthy", "workers": healthy, **llm.stats()},
        status_code=200 if ok else 503,
    )


async def models(request: Any) -> Any:
    """``GET /v1/models``: one model per method."""
    from starlette.responses import JSONResponse

    data = [
        {"id": name, "object": "model", "owned_by": "scaffold-actors"}
        for name in request.app.state.methods
    ]
    return JSONResponse({"object": "list", "data": data})


async def completions(request: Any) -> Any:
    """``POST /v1/completions``."""
    return await _complete(request, chat=False)


async def chat_completions(request: Any) -> Any:
    """``POST /v1/chat/completions``."""
    return await _complete(request, chat=True)


async def _complete(request: Any, chat: bool) -> Any:
    started = time.perf_counter()
    response, model, tokens = await _completion(request, chat, started)
    if tokens != _STREAMED:  # a stream writes its line when it ends
        _access(request.url.path, model, response.status_code, started, tokens, False)
    return response


async def _completion(request: Any, chat: bool, started: float) -> tuple[Any, Any, int | None]:
    """The response, the model asked for, and the completion tokens spent
    (``_STREAMED`` for a stream, which logs itself when it ends)."""
    from starlette.responses import JSONResponse, StreamingResponse

    state = request.app.state
    model: Any = None
    try:
        body = await protocol.read_json(request, state.max_body_bytes)
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            model = body["model"][:200]  # (named in the access log even when refused)
        req = protocol.parse_request(body, chat)
        model = req.model
        kwargs = _controller_kwargs(req, state.methods)
        prompt: Any = list(req.messages or ()) if chat else req.prompt
        llm: AsyncScaffoldingLlm = state.llm
        result = await llm.generate_async(prompt, block=False, **kwargs)
    except TooManyRequestsError as e:
        return protocol.error_response(429, str(e), kind="rate_limit_error"), model, None
    except protocol.HTTPError as e:
        return protocol.error_for(e), model, None
    except InvalidRequestError as e:
        return protocol.error_for(_request_error(e, chat)), model, None
    meta = protocol.ResponseMeta.new(chat, kwargs["method"])
    if req.stream:
        events = _events(result, meta, req.include_usage, request.url.path, started)
        return StreamingResponse(events, media_type="text/event-stream"), model, _STREAMED
    outcome: dict[str, Any] = {}
    timeout = state.request_timeout

    async def wait() -> None:
        with anyio.move_on_after(timeout):
            try:
                outcome["result"] = await result
            except Exception as exc:
                outcome["error"] = exc
        tg.cancel_scope.cancel()

    async def watch_disconnect() -> None:
        await protocol.until_disconnected(request)
        outcome["disconnected"] = True
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        tg.start_soon(watch_disconnect)
    if "result" not in outcome and "error" not in outcome:
        await result.acancel()  # timed out or the client left: stop the engine work
        if outcome.get("disconnected"):
            return (
                protocol.error_response(499, "client disconnected", kind="cancelled"),
                model,
                None,
            )
        return (
            protocol.error_response(
                504, f"the request took longer than {timeout:g} s", kind="timeout"
            ),
            model,
            None,
        )
    if "error" in outcome:
        return _failure(outcome["error"], chat), model, result.usage.completion_tokens
    body = json.loads(json.dumps(_answer(meta, outcome["result"]), default=str))
    return JSONResponse(body), model, result.usage.completion_tokens


async def _events(
    result: ScaffoldingResult,
    meta: protocol.ResponseMeta,
    include_usage: bool,
    path: str = "",
    started: float = 0.0,
) -> AsyncIterator[str]:
    """SSE for one request: a single-sample method's text as it is generated (a
    streaming :class:`Sampler`, as ``scaffold serve`` runs ``cot``), progress
    comments while a method of several samples works, then the answer (the
    rest of it), usage and [DONE].  Closing the stream (client gone) cancels the request.
    The access log's line is written when the stream ends."""
    try:
        async for event in _event_stream(result, meta, include_usage):
            yield event
    finally:
        status = 200 if result.done and result.exception() is None else 499
        _access(path, meta.model, status, started, result.usage.completion_tokens, True)


async def _event_stream(
    result: ScaffoldingResult, meta: protocol.ResponseMeta, include_usage: bool
) -> AsyncIterator[str]:
    sent = ""  # the answer's text already streamed (single-sample methods)
    try:
        if meta.chat:
            yield protocol.sse(meta.role_chunk())
        async for partial in result:
            if partial.finished:
                continue
            text = partial.output_str or ""
            if not partial.details and text.startswith(sent):
                # one sample's tokens as they come (a streaming Sampler: cot)
                if len(text) > len(sent):
                    piece = protocol.chunk_choice(meta.chat, text[len(sent) :], None)
                    yield protocol.sse(meta.chunk([piece]))
                    sent = text
                continue
            yield protocol.sse_comment(f"progress {json.dumps(dict(partial.details), default=str)}")
        final = await result
    except Exception as exc:  # the method failed: tell the client in-band
        yield protocol.sse_error(f"{type(exc).__name__}: {exc}")
        return
    finally:
        if not result.done:
            with anyio.CancelScope(shield=True):
                await result.acancel()
    body = _answer(meta, final)
    whole = body["choices"][0]
    text = whole["message"]["content"] if meta.chat else whole["text"]
    if sent and text.startswith(sent):
        text = text[len(sent) :]  # the rest of a streamed sample
    piece = protocol.chunk_choice(
        meta.chat, text, whole["finish_reason"], extra={"scaffold": whole["scaffold"]}
    )
    yield protocol.sse(meta.chunk([piece]))
    if include_usage:
        yield protocol.sse(meta.chunk([], body["usage"]))
    yield protocol.SSE_DONE


def create_app(
    methods: Mapping[str, Any],
    workers: Mapping[str, Any],
    *,
    max_in_flight: int = 16,
    request_timeout: float = 300.0,
    max_body_bytes: int = 1_000_000,
) -> Any:
    """A Starlette app serving ``methods`` (name -> controller) over ``workers``."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", models),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ],
        lifespan=_lifespan,
    )
    app.state.methods = dict(methods)
    app.state.workers = workers
    app.state.max_in_flight = max_in_flight
    app.state.request_timeout = request_timeout
    app.state.max_body_bytes = max_body_bytes
    return app
