"""Value types shared by every engine: sampling parameters, requests, deltas, errors."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from ._toolcalls import ToolCall, check_tools

__all__ = [
    "SAMPLING_FIELDS",
    "AbortNotAcknowledgedWarning",
    "ChatMessage",
    "EngineClosedError",
    "EngineDelta",
    "EngineError",
    "EngineRequest",
    "InvalidRequestError",
    "KVCacheDrop",
    "NotSupportedError",
    "PrefixGroup",
    "SamplingParams",
    "check_sampling_field",
    "stop_holdback",
]


class EngineError(RuntimeError):
    """The engine failed while serving a request (thread died, malformed output, server error)."""


class EngineClosedError(EngineError):
    """The engine was closed (or never started) when a request reached it."""


class NotSupportedError(EngineError):
    """The engine has no mechanism for what was asked (a KV-cache hint to an
    engine that keeps no prefix cache it can release, a server without the
    endpoint).  Nothing was changed."""


class AbortNotAcknowledgedWarning(RuntimeWarning):
    """An engine did not confirm an abort within its ``abort_timeout``: the request
    may still hold a slot in the engine (the engine is stalled or overloaded)."""


class InvalidRequestError(ValueError):
    """A request was rejected before it reached the engine.

    ``field`` names the offending field (for example ``"max_tokens"``) so callers
    can point the user at what to fix; ``reason`` is the message without it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled as itself (an error from a Ray actor or a child process)
        return (type(self), (self.field, self.reason), self.__dict__)


def _check_optional_number(
    field: str, value: Any, *, low: float, high: float | None = None, low_open: bool = False
) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(field, f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise InvalidRequestError(field, f"must be finite, got {value!r}")
    if (value <= low) if low_open else (value < low):
        op = ">" if low_open else ">="
        raise InvalidRequestError(field, f"must be {op} {low}, got {value!r}")
    if high is not None and value > high:
        raise InvalidRequestError(field, f"must be <= {high}, got {value!r}")


def _check_optional_int(field: str, value: Any, *, low: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(field, f"must be an integer, got {type(value).__name__}")
    if value < low:
        raise InvalidRequestError(field, f"must be >= {low}, got {value!r}")


def _normalise_stop(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    out = tuple(value)
    for s in out:
        if not isinstance(s, str) or not s:
            raise InvalidRequestError("stop", f"stop strings must be non-empty str, got {s!r}")
    return out


_FIELD_CHECKS: dict[str, Callable[[Any], None]] = {
    "max_tokens": lambda v: _check_optional_int("max_tokens", v, low=1),
    "temperature": lambda v: _check_optional_number("temperature", v, low=0.0, high=100.0),
    "top_p": lambda v: _check_optional_number("top_p", v, low=0.0, high=1.0, low_open=True),
    "top_k": lambda v: _check_optional_int("top_k", v, low=0),
    "seed": lambda v: _check_optional_int("seed", v, low=0),
    "num_logprobs": lambda v: _check_optional_int("num_logprobs", v, low=0),
    "n": lambda v: _check_optional_int("n", v, low=1),
}

#: the numeric sampling fields :func:`check_sampling_field` knows
SAMPLING_FIELDS: frozenset[str] = frozenset(_FIELD_CHECKS)


def check_sampling_field(name: str, value: Any) -> None:
    """Check one numeric sampling field the way :class:`SamplingParams` does.

    ``None`` passes (the field is left unset).  Raises :class:`InvalidRequestError`
    naming ``name`` when the value has the wrong type or range, and
    :class:`KeyError` when ``name`` is not one of :data:`SAMPLING_FIELDS`.
    """
    _FIELD_CHECKS[name](value)


def first_stop(text: str, stops: Sequence[str], start: int = 0) -> int:
    """Where the earliest of ``stops`` begins in ``text`` (searched from
    ``start``), or ``-1`` when none occurs: the text an engine delivers ends there."""
    found = [i for i in (text.find(s, start) for s in stops) if i != -1]
    return min(found) if found else -1


def stop_holdback(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could be the start of one of
    ``stops`` (and so must not be streamed yet: the stop string may complete in the
    next token and then it is cut).  Costs ``O(sum(len(stop)))`` string compares."""
    held = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), held, -1):
            if text.endswith(s[:k]):
                held = k
                break
    return held


def check_context(prompt_tokens: int, max_tokens: int, limit: int) -> None:
    """Reject a request whose prompt + ``max_tokens`` exceeds the context ``limit``."""
    need = prompt_tokens + max_tokens
    if need > limit and prompt_tokens >= limit:
        raise InvalidRequestError(
            "prompt",
            f"prompt is {prompt_tokens} tokens: it leaves no room to generate in the "
            f"context length {limit}",
        )
    if need > limit:
        raise InvalidRequestError(
            "prompt",
            f"prompt is {prompt_tokens} tokens and max_tokens is {max_tokens}: {need} exceeds "
            f"the context length {limit}",
        )


def validate_sampling(
    *,
    max_tokens: Any = None,
    temperature: Any = None,
    top_p: Any = None,
    top_k: Any = None,
    seed: Any = None,
    num_logprobs: Any = None,
    n: Any = 1,
) -> None:
    """Raise :class:`InvalidRequestError` naming the first invalid field."""
    _check_optional_int("max_tokens", max_tokens, low=1)
    _check_optional_number("temperature", temperature, low=0.0, high=100.0)
    _check_optional_number("top_p", top_p, low=0.0, high=1.0, low_open=True)
    _check_optional_int("top_k", top_k, low=0)
    _check_optional_int("seed", seed, low=0)
    _check_optional_int("num_logprobs", num_logprobs, low=0)
    _check_optional_int("n", n, low=1)


@attrs.frozen(slots=True)
class SamplingParams:
    """How to sample one completion. Validated on construction.

    ``temperature == 0`` means greedy decoding. ``num_logprobs`` asks for the log
    probability of each sampled token (``0`` means only the sampled token,
    ``k > 0`` also the ``k`` most likely alternatives where the engine supports it).
    ``ignore_eos`` keeps generating past the end-of-sequence token, to exactly
    ``max_tokens`` unless a ``stop`` string ends it (load replays, benchmarks).
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = attrs.field(default=(), converter=_normalise_stop)
    seed: int | None = None
    num_logprobs: int | None = None
    ignore_eos: bool = False

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.ignore_eos, bool):
            raise InvalidRequestError("ignore_eos", f"must be a bool, got {self.ignore_eos!r}")
        validate_sampling(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            num_logprobs=self.num_logprobs,
        )


@attrs.frozen(slots=True)
class ChatMessage:
    """One chat message.  An assistant message may carry the ``tool_calls`` it
    made (OpenAI dicts), a ``tool`` message the ``tool_call_id`` it answers."""

    role: str
    content: str
    tool_calls: tuple[Mapping[str, Any], ...] | None = None
    tool_call_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [dict(c) for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


def _freeze_messages(
    value: Sequence[Mapping[str, Any] | ChatMessage] | None,
) -> tuple[ChatMessage, ...] | None:
    if value is None:
        return None
    out = []
    for i, m in enumerate(value):
        if isinstance(m, ChatMessage):
            out.append(m)
            continue
        calls = m.get("tool_calls") if isinstance(m, Mapping) else None
        content = m.get("content") if isinstance(m, Mapping) else None
        if calls and content is None:
            content = ""  # an assistant turn that only called tools
        if (
            not isinstance(m, Mapping)
            or not isinstance(m.get("role"), str)
            or not isinstance(content, str)
        ):
            raise InvalidRequestError(
                "messages", f"message {i} must have str 'role' and 'content', got {m!r}"
            )
        if calls is not None and (
            not isinstance(calls, Sequence) or not all(isinstance(c, Mapping) for c in calls)
        ):
            raise InvalidRequestError(
                "messages", f"message {i}: tool_calls must be a list of objects"
            )
        call_id = m.get("tool_call_id")
        out.append(
            ChatMessage(
                m["role"],
                content,
                tuple(dict(c) for c in calls) if calls else None,
                str(call_id) if call_id is not None else None,
            )
        )
    return tuple(out)


def _tools(value: Any) -> tuple[dict[str, Any], ...] | None:
    try:
        return check_tools(value)
    except ValueError as e:
        raise InvalidRequestError("tools", str(e)) from None


# a process's groups are told apart from another's (a group crosses to a Ray
# actor or a child process pickled): a random process tag above a counter
_GROUP_TAG = int.from_bytes(os.urandom(4), "little") << 32
_group_keys = itertools.count(1)


def _group_key() -> int:
    return _GROUP_TAG | next(_group_keys)


def _check_size(_: Any, __: Any, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidRequestError("group", f"size must be an int >= 1 or None, got {value!r}")


@attrs.frozen(slots=True)
class PrefixGroup:
    """Requests that share a prompt prefix and may arrive together: the samples
    of a vote (one prompt), the children of a tree-search node (the parent's
    text), a chat's next turns (the history).

    Give every member's :class:`EngineRequest` the same group (``group=``).  It
    is a hint: each engine uses it the best way it has (a bridged or simulated
    engine admits the first member alone and the others once its prompt is
    prefilled, so they reuse its KV blocks instead of computing the prefix
    again; see docs/performance.md, "Shared prefixes").  Members stay separate
    requests: each is cancelled, fails and finishes on its own.

    ``size`` is how many members are expected (``None``: unknown), for engines
    that take a group at once.  Two groups are the same group when their
    ``key`` is (a group keeps it across processes: a Ray actor or a child
    process sees the group its members were given).
    """

    size: int | None = attrs.field(default=None, validator=_check_size)
    key: int = attrs.field(factory=_group_key, repr=False)


@attrs.frozen(slots=True)
class EngineRequest:
    """One completion request as an engine sees it.

    Exactly one of ``prompt`` (text), ``prompt_token_ids`` or ``messages`` (chat,
    rendered with the engine's chat template) is set.  ``stream=False`` lets the
    engine deliver the whole output at once instead of a delta per step.

    ``continuation`` (optional) is the start of the response: the model continues
    it instead of starting a new reply (a partial reasoning trace being probed or
    extended).  Engines render it as the beginning of the assistant turn; the
    output does not repeat it.

    ``tools`` (optional, chat only) are OpenAI function tools offered to the
    model: an HTTP engine passes them to its server's tool-call API, a local
    engine offers them in the system message (:func:`render_messages`); the
    calls come back on the final delta's ``tool_calls`` (an HTTP server's) or
    are written in the text as ``<tool_call>`` blocks (:func:`parse_tool_calls`).

    ``group`` (optional) names the :class:`PrefixGroup` of requests sharing
    this one's prompt prefix, so the engine computes the prefix once.
    """

    params: SamplingParams
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(tuple)
    )
    messages: tuple[ChatMessage, ...] | None = attrs.field(default=None, converter=_freeze_messages)
    stream: bool = True
    continuation: str | None = None
    tools: tuple[dict[str, Any], ...] | None = attrs.field(default=None, converter=_tools)
    group: PrefixGroup | None = None

    def __attrs_post_init__(self) -> None:
        if self.group is not None and not isinstance(self.group, PrefixGroup):
            raise InvalidRequestError("group", f"must be a PrefixGroup or None, got {self.group!r}")
        if self.continuation is not None and not isinstance(self.continuation, str):
            raise InvalidRequestError("continuation", "must be a string or None")
        given = [x is not None for x in (self.prompt, self.prompt_token_ids, self.messages)]
        if sum(given) != 1:
            raise InvalidRequestError(
                "prompt", "exactly one of prompt, prompt_token_ids or messages must be given"
            )
        if self.prompt is not None and (not isinstance(self.prompt, str) or not self.prompt):
            raise InvalidRequestError("prompt", "must be a non-empty string")
        if self.prompt_token_ids is not None and not self.prompt_token_ids:
            raise InvalidRequestError("prompt_token_ids", "must not be empty")
        if self.messages is not None and not self.messages:
            raise InvalidRequestError("messages", "must not be empty")
        if self.tools and self.messages is None:
            raise InvalidRequestError("tools", "tools are offered in chats: give messages")


#: one token's most likely alternatives: ``((token text, logprob), ...)``
TopLogprobs = tuple[tuple[str, float], ...]


@attrs.frozen(slots=True)
class EngineDelta:
    """New output of one request since the previous delta.

    ``finish_reason`` is set on the last delta only: ``"stop"`` (end of sequence or
    a stop string), ``"length"`` (``max_tokens`` reached).  ``logprobs`` holds one
    value per new token when they were asked for.  ``token_count`` is the number of
    new tokens when an engine cannot report their ids (some remote servers);
    otherwise it is ``len(token_ids)`` (see :attr:`num_tokens`).
    """

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...] | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    token_count: int | None = None
    #: on the final delta: the tool calls an engine with a tool-call API reported
    tool_calls: tuple[ToolCall, ...] | None = None
    #: reasoning text a server reports apart from the answer (``reasoning_content``)
    reasoning: str = ""
    #: on the final delta: the reasoning tokens a server reported (``None``: unknown)
    reasoning_tokens: int | None = None
    #: per new token, its most likely alternatives ``((token, logprob), ...)``, as
    #: the engine reported them, when ``num_logprobs > 0`` was asked (``None``: not
    #: asked, or an engine that gives only the sampled token's logprob)
    top_logprobs: tuple[TopLogprobs, ...] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def num_tokens(self) -> int:
        return self.token_count if self.token_count is not None else len(self.token_ids)


@attrs.frozen(slots=True)
class KVCacheDrop:
    """A hint that a conversation is over: release the prefix-cache blocks that
    hold it, past those of its first ``keep_messages`` messages (typically the
    leading system messages other conversations share).

    ``messages`` is the conversation as the engine saw it, the last assistant
    reply included.  Built (and checked) at the point of submission: an empty
    conversation or a ``keep_messages`` outside ``0..len(messages)`` raises
    :class:`InvalidRequestError` naming the field.
    """

    messages: tuple[ChatMessage, ...] = attrs.field(converter=_freeze_messages)
    keep_messages: int = 0
    tools: tuple[dict[str, Any], ...] | None = attrs.field(default=None, converter=_tools)

    def __attrs_post_init__(self) -> None:
        if not self.messages:
            raise InvalidRequestError("messages", "must not be empty")
        keep = self.keep_messages
        if (
            isinstance(keep, bool)
            or not isinstance(keep, int)
            or not 0 <= keep <= len(self.messages)
        ):
            raise InvalidRequestError(
                "keep_messages", f"must be an int in 0..{len(self.messages)}, got {keep!r}"
            )

    def conversation(self) -> EngineRequest:
        """The whole conversation as a request whose prompt tokens are those the
        engine cached: the last assistant reply becomes the ``continuation`` (the
        prompt the engine rendered for it, then the reply)."""
        msgs, last = self.messages, self.messages[-1]
        params = SamplingParams(max_tokens=1)
        if last.role == "assistant" and len(msgs) > 1 and not last.tool_calls:
            return EngineRequest(
                params, messages=msgs[:-1], continuation=last.content, tools=self.tools
            )
        return EngineRequest(params, messages=msgs, tools=self.tools)

    @classmethod
    def retaining(
        cls,
        messages: Sequence[Mapping[str, Any] | ChatMessage],
        retained: Sequence[Mapping[str, Any] | ChatMessage],
        tools: Any = None,
    ) -> KVCacheDrop:
        """The drop of ``messages`` keeping the blocks of ``retained``, which
        must be their first messages (TensorRT-LLM's ``messages_to_retain``).
        Raises :class:`InvalidRequestError` naming ``messages`` or
        ``messages_to_retain``."""
        conversation = _freeze_messages(messages) or ()
        try:
            kept = _freeze_messages(retained) or ()
        except InvalidRequestError as e:
            raise InvalidRequestError("messages_to_retain", e.reason) from None
        if conversation[: len(kept)] != kept:
            raise InvalidRequestError(
                "messages_to_retain", "must be the conversation's first messages, in order"
            )
        return cls(conversation, len(kept), tools=tools)

    @classmethod
    def leading_system(cls, messages: Sequence[Any]) -> int:
        """How many messages (dicts, or objects with a ``role``) lead the
        conversation with role ``system`` (what TensorRT-LLM's
        ``DropKVCacheTask`` retains)."""
        n = 0
        for m in messages:
            role = m.get("role") if isinstance(m, Mapping) else getattr(m, "role", None)
            if role != "system":
                break
            n += 1
        return n
