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
the field.  Needs the ``server`` extra (starlette, uvicorn).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio

from engine_bridge import EngineError, InvalidRequestError

from ._errors import RequestCancelledError, TooManyRequestsError
from ._runtime import AsyncScaffoldingLlm
from ._tasks import GenerationTask

__all__ = ["MethodRouter", "create_app"]


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


def _error(
    status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"
) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": None}},
        status_code=status,
    )


def _parse(
    body: Any, chat: bool, methods: Mapping[str, Any]
) -> tuple[Any, dict[str, Any], bool, bool]:
    """(prompt, controller kwargs, stream?, include usage?); raises InvalidRequestError."""
    if not isinstance(body, Mapping):
        raise InvalidRequestError("body", "must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or model not in methods:
        raise InvalidRequestError(
            "model", f"unknown model {model!r}; the models are methods: {', '.join(methods)}"
        )
    if chat:
        prompt = body.get("messages")
        if not isinstance(prompt, list) or not prompt:
            raise InvalidRequestError("messages", "must be a non-empty list of messages")
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequestError("prompt", "must be a non-empty string")
    kwargs: dict[str, Any] = {"method": model}
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    probe = GenerationTask(input_str="x")
    for field, value in (("max_tokens", max_tokens), ("temperature", body.get("temperature"))):
        if value is not None:
            setattr(probe, field, value)  # validates: InvalidTaskError names the field
            kwargs[field] = value
    samples = body.get("samples")
    if samples is not None:
        if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= 256:
            raise InvalidRequestError(
                "samples", f"must be an integer from 1 to 256, got {samples!r}"
            )
        kwargs["samples"] = samples
    if body.get("n", 1) != 1:
        raise InvalidRequestError("n", "only n=1 is served (the method samples internally)")
    options = body.get("stream_options") or {}
    if not isinstance(options, Mapping):
        raise InvalidRequestError("stream_options", "must be an object")
    return prompt, kwargs, bool(body.get("stream", False)), bool(options.get("include_usage"))


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
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    router = MethodRouter(methods)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with AsyncScaffoldingLlm(router, workers, max_in_flight=max_in_flight) as llm:
            state["llm"] = llm
            yield

    async def health(request: Request) -> Any:
        llm: AsyncScaffoldingLlm = state["llm"]
        healthy = llm.healthy()
        ok = all(healthy.values())
        return JSONResponse(
            {"status": "ok" if ok else "unhealthy", "workers": healthy, **llm.stats()},
            status_code=200 if ok else 503,
        )

    async def models(request: Request) -> Any:
        data = [{"id": name, "object": "model", "owned_by": "scaffold-actors"} for name in methods]
        return JSONResponse({"object": "list", "data": data})

    async def read_body(request: Request) -> bytes | None:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return None
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                return None
        return body

    def payload(rid: str, chat: bool, model: str, result: Any, created: int) -> dict[str, Any]:
        out = result.output
        text = out.output_str or ""
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": "length" if out.finish_reason == "length" else "stop",
            "scaffold": dict(out.details),
        }
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        u = result.usage
        return {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": {
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "total_tokens": u.prompt_tokens + u.completion_tokens,
            },
        }

    async def complete(request: Request, chat: bool) -> Any:
        raw = await read_body(request)
        if raw is None:
            return _error(413, f"the body is larger than {max_body_bytes} bytes", "body")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the body is not valid JSON", "body")
        try:
            prompt, kwargs, stream, include_usage = _parse(body, chat, methods)
        except InvalidRequestError as e:
            status = 404 if e.field == "model" else 400
            return _error(
                status,
                str(e),
                e.field,
                "model_not_found" if status == 404 else "invalid_request_error",
            )
        llm: AsyncScaffoldingLlm = state["llm"]
        try:
            result = await llm.generate_async(prompt, block=False, **kwargs)
        except TooManyRequestsError as e:
            return _error(429, str(e), kind="rate_limit_error")
        except InvalidRequestError as e:
            return _error(400, str(e), e.field)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:16]
        created = int(time.time())
        model = kwargs["method"]
        if stream:
            return StreamingResponse(
                _events(result, rid, chat, model, created, include_usage, payload),
                media_type="text/event-stream",
            )
        outcome: dict[str, Any] = {}

        async def wait() -> None:
            with anyio.move_on_after(request_timeout):
                try:
                    outcome["result"] = await result
                except Exception as exc:
                    outcome["error"] = exc
            tg.cancel_scope.cancel()

        async def watch_disconnect() -> None:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    outcome["disconnected"] = True
                    tg.cancel_scope.cancel()
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            tg.start_soon(watch_disconnect)
        if "result" not in outcome and "error" not in outcome:
            await result.acancel()  # timed out or the client left: stop the engine work
            if outcome.get("disconnected"):
                return _error(499, "client disconnected", kind="cancelled")
            return _error(
                504, f"the request took longer than {request_timeout:g} s", kind="timeout"
            )
        if "error" in outcome:
            return _failure(outcome["error"])
        return JSONResponse(
            json.loads(
                json.dumps(payload(rid, chat, model, outcome["result"], created), default=str)
            )
        )

    async def completions(request: Request) -> Any:
        return await complete(request, chat=False)

    async def chat_completions(request: Request) -> Any:
        return await complete(request, chat=True)

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", models),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def _failure(exc: BaseException) -> Any:
    if isinstance(exc, InvalidRequestError):
        return _error(400, str(exc), exc.field)
    if isinstance(exc, RequestCancelledError):
        return _error(503, str(exc), kind="cancelled")
    if isinstance(exc, EngineError):
        return _error(503, str(exc), kind="server_error")
    return _error(500, f"{type(exc).__name__}: {exc}", kind="server_error")


async def _events(
    result: Any, rid: str, chat: bool, model: str, created: int, include_usage: bool, payload: Any
) -> AsyncIterator[str]:
    """SSE for one request: progress comments while the method works, then the
    answer, usage and [DONE].  Closing the stream (client gone) cancels the request."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    try:
        if chat:
            first = {"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}
            yield f"data: {json.dumps({'id': rid, 'object': obj, 'created': created, 'model': model, 'choices': [first]})}\n\n"
        async for partial in result:
            if not partial.finished:
                yield f": progress {json.dumps(dict(partial.details), default=str)}\n\n"
        final = await result
    except Exception as exc:  # the method failed: tell the client in-band
        yield f"data: {json.dumps({'error': {'message': f'{type(exc).__name__}: {exc}', 'type': 'server_error'}})}\n\n"
        return
    finally:
        if not result.done:
            with anyio.CancelScope(shield=True):
                await result.acancel()
    body = payload(rid, chat, model, final, created)
    choice = body["choices"][0]
    text = choice.pop("message", {}).get("content") if chat else choice.pop("text")
    chunk_choice = {**choice, "delta": {"content": text}} if chat else {**choice, "text": text}
    yield f"data: {json.dumps({'id': rid, 'object': obj, 'created': created, 'model': model, 'choices': [chunk_choice]}, default=str)}\n\n"
    if include_usage:
        yield f"data: {json.dumps({'id': rid, 'object': obj, 'created': created, 'model': model, 'choices': [], 'usage': body['usage']})}\n\n"
    yield "data: [DONE]\n\n"
