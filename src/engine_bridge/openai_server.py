"""An OpenAI-compatible HTTP server over any engine.

    python -m engine_bridge.openai_server --engine hf --port 8000        # embedded model
    python -m engine_bridge.openai_server --engine simulated --port 8000 # no model

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /tokenize`` (vLLM's:
the engine's token count of a prompt), ``POST /_control/kv_cache/truncate``
(trtllm-serve's KV-cache hint: release a finished conversation's prefix-cache
blocks; 501 where the engine keeps none), ``POST /v1/completions`` and
``POST /v1/chat/completions`` (``stream`` with server-sent events,
``stream_options.include_usage``, ``logprobs``/``top_logprobs``, ``stop``, ``seed``,
``top_k`` as an extension).  Each choice also carries ``token_ids`` (an extension, as
vLLM offers).  Bad requests get a 400 with ``{"error": {"message", "type", "param"}}``;
an unhealthy engine a 503; a body over 16 MB a 413.  A chat with ``tools`` is
answered with ``message.tool_calls`` parsed from the ``<tool_call>`` blocks the model
wrote (the tools are offered to it in the system message); streamed, such an answer
is sent whole at the end.  The protocol (parsing, bodies,
SSE, errors) is :mod:`engine_bridge.openai_protocol`, shared with ``scaffold serve``.  A request with ``stream: false`` asks the engine for
the final output only (no message per token).  When a client disconnects, mid-stream
or while it waits for a one-body answer, the engine request is aborted.  Needs the ``server`` extra (starlette, uvicorn).
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from . import openai_protocol as protocol
from ._protocol import Engine
from ._toolcalls import ToolCall, answer_tool_calls
from ._types import (
    EngineDelta,
    EngineError,
    EngineRequest,
    InvalidRequestError,
    KVCacheDrop,
    SamplingParams,
    TopLogprobs,
)
from .openai_protocol import CompletionRequest

__all__ = [
    "chat_completions",
    "completions",
    "create_app",
    "engine_request",
    "health",
    "main",
    "models",
    "tokenize",
]

LISTENING = "engine_bridge.openai_server listening on"  # the first line on stdout


def engine_request(req: CompletionRequest) -> EngineRequest:
    """The engine request for a validated completion request, with this server's
    defaults (256 tokens for chat, 16 for completions, temperature 1)."""
    params = SamplingParams(
        max_tokens=req.max_tokens or (256 if req.chat else 16),
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        stop=req.stop,
        seed=req.seed,
        num_logprobs=req.logprobs,
        ignore_eos=req.ignore_eos,
    )
    if req.chat:
        assert req.messages is not None
        messages: list[Any] = list(req.messages)
        continuation = None
        if req.continue_final_message:
            messages, continuation = messages[:-1], messages[-1].get("content")
        return EngineRequest(
            params,
            messages=messages,
            stream=req.stream,
            continuation=continuation,
            tools=req.tools,
        )
    if isinstance(req.prompt, tuple):
        ids: Any = req.prompt  # attrs' optional(tuple) converter confuses mypy
        return EngineRequest(params, prompt_token_ids=ids, stream=req.stream)
    return EngineRequest(params, prompt=req.prompt, stream=req.stream)


@asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    async with app.state.engine:
        yield


async def health(request: Any) -> Any:
    """``GET /health``: 200 with the engine's live counts, 503 when unhealthy."""
    from starlette.responses import JSONResponse

    engine: Engine = request.app.state.engine
    ok = engine.healthy
    return JSONResponse(
        {
            "status": "ok" if ok else "unhealthy",
            "active": engine.num_active,
            "aborted": getattr(engine, "aborted", None),
            "cached_blocks": getattr(engine, "cached_blocks", None),
            # prompt tokens the engine computed and reused from its prefix cache
            "prefill_tokens": getattr(engine, "prefill_tokens", None),
            "cached_prompt_tokens": getattr(engine, "cached_prompt_tokens", None),
        },
        status_code=200 if ok else 503,
    )


async def models(request: Any) -> Any:
    """``GET /v1/models``: the one model served."""
    from starlette.responses import JSONResponse

    name = request.app.state.model_name
    return JSONResponse(
        {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "scaffold-actors"}]}
    )


async def completions(request: Any) -> Any:
    """``POST /v1/completions``."""
    return await _complete(request, chat=False)


async def chat_completions(request: Any) -> Any:
    """``POST /v1/chat/completions``."""
    return await _complete(request, chat=True)


async def tokenize(request: Any) -> Any:
    """``POST /tokenize`` (vLLM's endpoint): ``{"prompt": ...}`` or
    ``{"messages": [...]}`` -> ``{"count": n}``, the engine's own count of the
    prompt's tokens (as a completion of it would see them)."""
    from starlette.responses import JSONResponse

    state = request.app.state
    engine: Engine = state.engine
    try:
        body = await protocol.read_json(request, state.max_body_bytes)
        chat = isinstance(body, dict) and "messages" in body
        req = protocol.parse_request(body, chat)
        count = await engine.count_tokens(engine_request(req))
    except (protocol.HTTPError, InvalidRequestError, EngineError) as e:
        return protocol.error_for(e)
    return JSONResponse({"count": count})


async def kv_cache_truncate(request: Any) -> Any:
    """``POST /_control/kv_cache/truncate`` (trtllm-serve's KV-cache hint):
    ``{"messages": [...], "messages_to_retain": [...]}`` -> ``{"freed_blocks": n}``
    (``null`` when the engine does not say).  ``messages_to_retain`` must be the
    conversation's first messages (400 otherwise); an engine that keeps no
    releasable prefix cache answers 501."""
    from starlette.responses import JSONResponse

    state = request.app.state
    engine: Engine = state.engine
    try:
        body = await protocol.read_json(request, state.max_body_bytes)
        drop = _truncate_request(body)
        freed = await engine.drop_kv_cache(drop)
    except (protocol.HTTPError, InvalidRequestError, EngineError) as e:
        return protocol.error_for(e)
    return JSONResponse({"freed_blocks": freed})


def _truncate_request(body: Any) -> KVCacheDrop:
    if not isinstance(body, dict):
        raise protocol.HTTPError(400, "the body must be a JSON object", "body")
    if body.get("action", "truncate") != "truncate":
        raise InvalidRequestError("action", f"only 'truncate' is served, got {body['action']!r}")
    messages: Any = body.get("messages")
    retain: Any = body.get("messages_to_retain", [])
    for name, value in (("messages", messages), ("messages_to_retain", retain)):
        if not isinstance(value, list):
            raise InvalidRequestError(name, "must be a list of messages")
    return KVCacheDrop.retaining(messages, retain, tools=body.get("tools"))


async def _complete(request: Any, chat: bool) -> Any:
    from starlette.responses import JSONResponse, Response, StreamingResponse

    state = request.app.state
    engine: Engine = state.engine
    try:
        req = protocol.parse_request(await protocol.read_json(request, state.max_body_bytes), chat)
        ereq = engine_request(req)
        engine.check(ereq)
    except (protocol.HTTPError, InvalidRequestError) as e:
        return protocol.error_for(e)
    if not engine.healthy:
        return protocol.error_response(503, "the engine is not healthy", kind="server_error")
    meta = protocol.ResponseMeta.new(chat, state.model_name)
    if req.stream:
        return StreamingResponse(
            _events(engine, ereq, meta, req.include_usage), media_type="text/event-stream"
        )
    text, finish, prompt_tokens, count = "", None, 0, 0
    ids: list[int] = []
    lps: list[float] = []
    top: list[TopLogprobs] = []
    reported: tuple[ToolCall, ...] | None = None
    failed: Any = None
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await protocol.until_disconnected(request)
            tg.cancel_scope.cancel()  # aborts the engine request

        tg.start_soon(watch)
        try:
            async with engine.open_stream(ereq) as deltas:
                async for d in deltas:
                    text += d.text
                    ids += d.token_ids
                    lps += d.logprobs or ()
                    top += d.top_logprobs or ()
                    finish = d.finish_reason or finish
                    prompt_tokens = d.prompt_tokens or prompt_tokens
                    count += d.num_tokens
                    reported = d.tool_calls or reported
        except (InvalidRequestError, EngineError) as e:
            failed = protocol.error_for(e)
        tg.cancel_scope.cancel()
    if failed is not None:
        return failed
    if finish is None:  # the client left; nobody reads this
        return Response(status_code=499)
    logprobs = lps if ereq.params.num_logprobs is not None else None
    text, calls = answer_tool_calls(text, reported, bool(ereq.tools))
    answer = protocol.choice(
        chat,
        text,
        "tool_calls" if calls else finish,
        token_ids=ids,
        logprobs=logprobs,
        tool_calls=calls,
        top_logprobs=top or None,
    )
    return JSONResponse(meta.completion([answer], protocol.usage(prompt_tokens, count)))


async def _events(
    engine: Engine, ereq: EngineRequest, meta: protocol.ResponseMeta, include_usage: bool
) -> AsyncIterator[str]:
    """One chunk per engine delta, then the usage chunk if asked and ``[DONE]``.
    Closing the stream (client gone) aborts the engine request."""
    prompt_tokens = completion_tokens = 0
    held: list[EngineDelta] = []  # with tools, the answer is sent whole at the end
    try:
        async with engine.open_stream(ereq) as deltas:
            async for d in deltas:
                prompt_tokens = d.prompt_tokens or prompt_tokens
                completion_tokens += d.num_tokens
                if ereq.tools:
                    held.append(d)
                    continue
                piece = protocol.chunk_choice(
                    meta.chat,
                    d.text,
                    d.finish_reason,
                    token_ids=d.token_ids,
                    logprobs=d.logprobs,
                    top_logprobs=d.top_logprobs,
                )
                yield protocol.sse(meta.chunk([piece]))
    except (EngineError, InvalidRequestError) as e:
        yield protocol.sse_error(str(e))
        return
    if held:
        reported = next((d.tool_calls for d in reversed(held) if d.tool_calls), None)
        text, calls = answer_tool_calls("".join(d.text for d in held), reported, True)
        ids = [t for d in held for t in d.token_ids]
        if text:
            piece = protocol.chunk_choice(meta.chat, text, None, token_ids=ids)
            yield protocol.sse(meta.chunk([piece]))
        if calls:
            yield protocol.sse(meta.chunk([protocol.tool_call_chunk_choice(calls)]))
        finish = "tool_calls" if calls else held[-1].finish_reason
        yield protocol.sse(meta.chunk([protocol.chunk_choice(meta.chat, "", finish)]))
    if include_usage:
        yield protocol.sse(meta.chunk([], protocol.usage(prompt_tokens, completion_tokens)))
    yield protocol.SSE_DONE


def create_app(
    engine: Engine, model_name: str = "scaffold", *, max_body_bytes: int = 16_000_000
) -> Any:
    """A Starlette app serving ``engine`` (started and stopped with the app).
    Bodies over ``max_body_bytes`` get a 413."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", models),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/tokenize", tokenize, methods=["POST"]),
            Route("/_control/kv_cache/truncate", kv_cache_truncate, methods=["POST"]),
        ],
        lifespan=_lifespan,
    )
    app.state.engine = engine
    app.state.model_name = model_name
    app.state.max_body_bytes = max_body_bytes
    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="OpenAI-compatible server over an engine")
    ap.add_argument("--engine", choices=["hf", "simulated"], default="hf")
    ap.add_argument(
        "--model", default=None, help="model folder for --engine hf (default: embedded)"
    )
    ap.add_argument("--model-name", default="scaffold")
    ap.add_argument("--device", default="cpu", help="torch device for --engine hf (cuda:1, ...)")
    ap.add_argument("--dtype", default="float32", help="torch dtype for --engine hf")
    ap.add_argument("--max-concurrent", type=int, default=64, help="requests in the engine at once")
    ap.add_argument(
        "--kv-cache-tokens", type=int, default=32768, help="KV cache size (0: from free memory)"
    )
    ap.add_argument(
        "--admission-window",
        type=float,
        default=0.005,
        help="--engine hf: quiet gap (s) that closes a burst of arriving requests",
    )
    ap.add_argument(
        "--admission-window-max",
        type=float,
        default=0.05,
        help="--engine hf: the longest (s) a burst gathers",
    )
    ap.add_argument("--simulated-reply", default=None, help="fixed reply of the simulated engine")
    ap.add_argument("--seed", type=int, default=0, help="the engine's sampling seed")
    ap.add_argument(
        "--max-context", type=int, default=512, help="context length of the simulated engine"
    )
    ap.add_argument(
        "--simulated-step-seconds",
        type=float,
        default=None,
        help="simulated engine: seconds per decode step of the whole batch (a GPU's pace)",
    )
    ap.add_argument(
        "--prefix-cache-blocks",
        type=int,
        default=0,
        help="prefix-cache blocks of the simulated engine (0: none)",
    )
    ap.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0: a free port (printed on stdout)")
    args = ap.parse_args(argv)
    import uvicorn

    engine: Any
    if args.engine == "simulated":
        from ._engines._simulated import CostModel, SimulatedEngine

        step = args.simulated_step_seconds
        engine = SimulatedEngine(
            args.simulated_reply,
            max_context=args.max_context,
            prefix_cache_blocks=args.prefix_cache_blocks,
            cost=None if step is None else CostModel(0.0, step, 0.0),
            seed=args.seed,
            max_batch_size=max(256, args.max_concurrent),
        )
    else:
        from ._engines._hf import HFEngine

        engine = HFEngine(
            args.model,
            device=args.device,
            dtype=args.dtype,
            max_concurrent=args.max_concurrent,
            kv_cache_tokens=args.kv_cache_tokens or None,
            admission_window=args.admission_window,
            admission_window_max=args.admission_window_max,
            seed=args.seed,
        )
    if args.parent_pid is not None:
        _exit_with_parent(args.parent_pid)
    # bind first, so ``--port 0`` takes a free port and says which (ProcessEngine reads it)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    host, port = sock.getsockname()[:2]
    print(f"{LISTENING} http://{host}:{port}", flush=True)
    if args.port == 0:  # started by a program that read the line: the rest goes to stderr
        os.dup2(2, 1)
    config = uvicorn.Config(create_app(engine, args.model_name), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


def _exit_with_parent(pid: int) -> None:
    """Stop this server (SIGTERM to itself) once process ``pid`` is no longer its
    parent: a parent killed outright must not leave a server holding a GPU."""
    import signal
    import threading

    def watch() -> None:
        while os.getppid() == pid:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    main()
