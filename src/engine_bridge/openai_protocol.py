"""The OpenAI-compatible HTTP protocol shared by this project's two servers.

``engine_bridge.openai_server`` (an engine as a server) and ``scaffold serve``
(inference-time methods as models) speak the same protocol through this module,
so each server is only its routing and what it serves.  It holds:

* :func:`parse_request`: a ``/v1/completions`` or ``/v1/chat/completions`` JSON
  body to a validated :class:`CompletionRequest`; a bad value raises
  :class:`InvalidRequestError` naming the field;
* :func:`read_json`: the body, bounded in size;
* :class:`ResponseMeta` with :func:`choice`, :func:`chunk_choice`, :func:`usage`:
  response bodies and stream chunks; :func:`sse`, :func:`sse_comment`,
  :func:`sse_error`, :data:`SSE_DONE`: server-sent events;
* :class:`HTTPError`, :func:`error_response`, :func:`error_for`: errors as
  ``{"error": {"message", "type", "param", "code"}}`` with their status;
* :func:`until_disconnected`: returns when the client has gone.

Everything but :func:`read_json`, :func:`until_disconnected` and
:func:`error_response` (which builds a Starlette response, imported lazily) is
free of I/O.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ._toolcalls import ToolCall, check_tools
from ._types import (
    EngineError,
    InvalidRequestError,
    NotSupportedError,
    TopLogprobs,
    check_sampling_field,
)

__all__ = [
    "SSE_DONE",
    "CompletionRequest",
    "HTTPError",
    "ResponseMeta",
    "choice",
    "chunk_choice",
    "error_for",
    "error_response",
    "parse_request",
    "read_json",
    "sse",
    "sse_comment",
    "sse_error",
    "tool_call_chunk_choice",
    "until_disconnected",
    "usage",
]

SSE_DONE = "data: [DONE]\n\n"
#: the most ``top_logprobs`` / ``logprobs`` alternatives a request may ask for
MAX_LOGPROBS = 20


class HTTPError(Exception):
    """An error with its HTTP answer: ``status``, ``message``, ``param`` (the
    offending field or ``None``) and ``kind`` (the error ``type``)."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind


def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error") -> Any:
    """The JSON body of an error answer."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def error_response(
    status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"
) -> Any:
    """A Starlette ``JSONResponse`` carrying :func:`error_body`."""
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(message, param, kind), status_code=status)


def error_for(exc: BaseException) -> Any:
    """The error answer for an exception: an :class:`HTTPError` answers as itself;
    :class:`InvalidRequestError` is a 400 naming its field; :class:`NotSupportedError`
    a 501; :class:`EngineError` a 503;
    anything else a 500 naming the exception type."""
    if isinstance(exc, HTTPError):
        return error_response(exc.status, exc.message, exc.param, exc.kind)
    if isinstance(exc, InvalidRequestError):
        return error_response(400, str(exc), exc.field)
    if isinstance(exc, NotSupportedError):
        return error_response(501, str(exc), kind="not_supported")
    if isinstance(exc, EngineError):
        return error_response(503, str(exc), kind="server_error")
    return error_response(500, f"{type(exc).__name__}: {exc}", kind="server_error")


async def read_json(request: Any, max_bytes: int) -> Any:
    """Read a Starlette request's JSON body.

    Raises :class:`HTTPError` 413 as soon as the body (declared or received)
    passes ``max_bytes``, without reading the rest, and 400 when it is not JSON.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPError(413, f"the body is larger than {max_bytes} bytes", "body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPError(413, f"the body is larger than {max_bytes} bytes", "body")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPError(400, "the body is not valid JSON", "body") from None


async def until_disconnected(request: Any) -> None:
    """Return when the client of a Starlette request has disconnected.  Call it
    after the body was read (the next ASGI message is then the client leaving);
    cancel it to stop watching."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@attrs.frozen
class CompletionRequest:
    """A validated completion request.  Unset fields are ``None``; each server
    applies its own defaults.  ``body`` is the whole JSON object, for extensions
    a server reads itself."""

    chat: bool
    model: str | None
    prompt: str | tuple[int, ...] | None  # completions
    messages: tuple[Mapping[str, Any], ...] | None  # chat
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    seed: int | None
    stop: str | tuple[str, ...] | None
    logprobs: int | None  # alternatives per token; None: no logprobs
    stream: bool
    include_usage: bool
    continue_final_message: bool
    body: Mapping[str, Any] = attrs.field(repr=False)
    tools: tuple[dict[str, Any], ...] | None = None
    ignore_eos: bool = False  # vLLM's and trtllm-serve's extension


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequestError(name, f"must be true or false, got {value!r}")
    return value


def _int_in(name: str, value: Any, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise InvalidRequestError(name, f"must be an integer from 0 to {high}, got {value!r}")
    return value


def parse_request(body: Any, chat: bool) -> CompletionRequest:
    """Validate a completion (``chat=False``) or chat completion body.

    Raises :class:`InvalidRequestError` naming the first bad field: a body that is
    not an object; ``model`` not a string; ``messages`` not a non-empty list of
    objects with a string ``role``; ``prompt`` not a non-empty string or list of
    token ids; a sampling value of the wrong type or range; ``n`` other than 1
    (one choice is served); ``stream`` / ``logprobs`` flags that are not booleans;
    ``stream_options`` not an object; ``continue_final_message`` without a final
    assistant message.
    """
    if not isinstance(body, Mapping):
        raise InvalidRequestError("body", "must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequestError("model", f"must be a string, got {model!r}")
    prompt: str | tuple[int, ...] | None = None
    messages: tuple[Mapping[str, Any], ...] | None = None
    if chat:
        raw = body.get("messages")
        if not isinstance(raw, list) or not raw:
            raise InvalidRequestError("messages", "must be a non-empty list of messages")
        for i, m in enumerate(raw):
            if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
                raise InvalidRequestError(
                    "messages", f"message {i} must be an object with a string 'role', got {m!r}"
                )
        messages = tuple(raw)
    else:
        raw = body.get("prompt")
        if isinstance(raw, str) and raw.strip():
            prompt = raw
        elif (
            isinstance(raw, list)
            and raw
            and all(isinstance(t, int) and not isinstance(t, bool) for t in raw)
        ):
            prompt = tuple(raw)
        else:
            raise InvalidRequestError(
                "prompt", "must be a non-empty string or a non-empty list of token ids"
            )
    max_tokens = body.get("max_tokens")
    field = "max_tokens"
    if max_tokens is None:
        max_tokens, field = body.get("max_completion_tokens"), "max_completion_tokens"
    values: dict[str, Any] = {}
    for name, value in (
        ("max_tokens", max_tokens),
        ("temperature", body.get("temperature")),
        ("top_p", body.get("top_p")),
        ("top_k", body.get("top_k")),
        ("seed", body.get("seed")),
    ):
        try:
            check_sampling_field(name, value)
        except InvalidRequestError as e:
            shown = field if name == "max_tokens" else name
            raise InvalidRequestError(shown, e.reason) from None
        values[name] = value
    n = body.get("n")
    if n is not None and n != 1:
        raise InvalidRequestError("n", f"only n=1 is served, got {n!r}")
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, list) and all(isinstance(s, str) and s for s in stop):
            stop = tuple(stop)
        elif not (isinstance(stop, str) and stop):
            raise InvalidRequestError(
                "stop", f"must be a string or a list of strings, got {stop!r}"
            )
    logprobs: int | None = None
    if chat:
        if _flag(body, "logprobs"):
            top = body.get("top_logprobs")
            logprobs = 0 if top is None else _int_in("top_logprobs", top, MAX_LOGPROBS)
    elif body.get("logprobs") is not None:
        logprobs = _int_in("logprobs", body["logprobs"], MAX_LOGPROBS)
    options = body.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise InvalidRequestError("stream_options", "must be an object")
    try:
        tools = check_tools(body.get("tools")) if chat else None
    except ValueError as e:
        raise InvalidRequestError("tools", str(e)) from None
    if not chat and body.get("tools") is not None:
        raise InvalidRequestError("tools", "tools are offered in chat completions only")
    continuation = chat and _flag(body, "continue_final_message")
    if continuation:
        assert messages is not None
        if messages[-1].get("role") != "assistant":
            raise InvalidRequestError(
                "continue_final_message", "the last message must be the assistant's"
            )
    return CompletionRequest(
        chat=chat,
        model=model,
        prompt=prompt,
        messages=messages,
        stop=stop,
        logprobs=logprobs,
        stream=_flag(body, "stream"),
        include_usage=bool(options.get("include_usage")),
        continue_final_message=continuation,
        body=body,
        tools=tools or None,
        ignore_eos=_flag(body, "ignore_eos"),
        **values,
    )


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _logprobs(
    chat: bool, logprobs: Sequence[float], top: Sequence[TopLogprobs] | None = None
) -> dict[str, Any]:
    """The ``logprobs`` block of a choice; ``top``: each token's alternatives,
    when the engine gave them (else ``top_logprobs`` lists are empty / absent)."""
    if chat:
        return {
            "content": [
                {
                    "token": "",
                    "logprob": lp,
                    "top_logprobs": [
                        {"token": t, "logprob": x} for t, x in (top[i] if top else ())
                    ],
                }
                for i, lp in enumerate(logprobs)
            ]
        }
    out: dict[str, Any] = {"tokens": ["" for _ in logprobs], "token_logprobs": list(logprobs)}
    if top:
        out["top_logprobs"] = [dict(alts) for alts in top]
    return out


def _choice(
    finish_reason: str | None,
    body: tuple[str, Any],
    chat: bool,
    token_ids: Sequence[int] | None,
    logprobs: Sequence[float] | None,
    extra: Mapping[str, Any] | None,
    top_logprobs: Sequence[TopLogprobs] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"index": 0, "finish_reason": finish_reason}
    if token_ids is not None:
        out["token_ids"] = list(token_ids)
    out[body[0]] = body[1]
    if logprobs is not None:
        out["logprobs"] = _logprobs(chat, logprobs, top_logprobs)
    if extra:
        out.update(extra)
    return out


def choice(
    chat: bool,
    text: str,
    finish_reason: str | None,
    *,
    token_ids: Sequence[int] | None = None,
    logprobs: Sequence[float] | None = None,
    extra: Mapping[str, Any] | None = None,
    tool_calls: Sequence[ToolCall] | None = None,
    top_logprobs: Sequence[TopLogprobs] | None = None,
) -> dict[str, Any]:
    """The one choice of a whole (non-streamed) answer: ``message`` for chat
    (with ``tool_calls`` when the model called tools), ``text`` otherwise;
    ``token_ids`` and ``extra`` keys are extensions."""
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_calls:
            message["content"] = text or None
            message["tool_calls"] = [c.to_dict() for c in tool_calls]
        body: tuple[str, Any] = ("message", message)
    else:
        body = ("text", text)
    return _choice(finish_reason, body, chat, token_ids, logprobs, extra, top_logprobs)


def tool_call_chunk_choice(tool_calls: Sequence[ToolCall]) -> dict[str, Any]:
    """A chat stream chunk's choice carrying whole tool calls (``index`` each)."""
    calls = [{"index": i, **c.to_dict()} for i, c in enumerate(tool_calls)]
    return {"index": 0, "finish_reason": None, "delta": {"tool_calls": calls}}


def chunk_choice(
    chat: bool,
    text: str,
    finish_reason: str | None,
    *,
    token_ids: Sequence[int] | None = None,
    logprobs: Sequence[float] | None = None,
    extra: Mapping[str, Any] | None = None,
    top_logprobs: Sequence[TopLogprobs] | None = None,
) -> dict[str, Any]:
    """The choice of one stream chunk: a ``delta`` for chat (empty on the final
    chunk when it brings no text), ``text`` otherwise."""
    if chat:
        body: tuple[str, Any] = (
            "delta",
            {"content": text} if text or finish_reason is None else {},
        )
    else:
        body = ("text", text)
    return _choice(finish_reason, body, chat, token_ids, logprobs, extra, top_logprobs)


@attrs.frozen
class ResponseMeta:
    """What every body and chunk of one answer repeats: its id, kind, creation
    time and model.  Make one per request with :meth:`new`."""

    chat: bool
    id: str
    created: int
    model: str

    @classmethod
    def new(cls, chat: bool, model: str) -> ResponseMeta:
        prefix = "chatcmpl-" if chat else "cmpl-"
        return cls(chat, prefix + uuid.uuid4().hex[:16], int(time.time()), model)

    def completion(
        self, choices: Sequence[Mapping[str, Any]], usage: Mapping[str, int]
    ) -> dict[str, Any]:
        """A whole answer's body."""
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": list(choices),
            "usage": dict(usage),
        }

    def chunk(
        self, choices: Sequence[Mapping[str, Any]], usage: Mapping[str, int] | None = None
    ) -> dict[str, Any]:
        """One stream chunk (``usage`` only on the usage chunk, whose choices are
        empty)."""
        out: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": list(choices),
        }
        if usage is not None:
            out["usage"] = dict(usage)
        return out

    def role_chunk(self) -> dict[str, Any]:
        """The first chunk of a chat stream: the assistant's role, no content."""
        return self.chunk([{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}])


def sse(obj: Any) -> str:
    """One server-sent event carrying ``obj`` as JSON (values JSON cannot hold are
    written with ``str``)."""
    return f"data: {json.dumps(obj, default=str)}\n\n"


def sse_comment(text: str) -> str:
    """A server-sent comment line (clients ignore it; it keeps proxies awake)."""
    return f": {text}\n\n"


def sse_error(message: str, kind: str = "server_error") -> str:
    """An error inside a stream that has already answered 200."""
    return sse({"error": {"message": message, "type": kind}})
