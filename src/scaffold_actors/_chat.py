"""Chat: role messages, tool descriptions and the chat task (TensorRT-LLM compatible)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from engine_bridge import (
    SamplingParams,
    ToolCall,
    render_messages,
)

from ._errors import InvalidTaskError
from ._tasks import StreamGenerationTask, Task

__all__ = [
    "AssistantMessage",
    "ChatTask",
    "OpenAIToolDescription",
    "RoleMessage",
    "SystemMessage",
    "ToolDescription",
    "ToolMessage",
    "UserMessage",
]


@dataclasses.dataclass
class RoleMessage:
    """One chat message: ``role``, ``content`` and an optional cache ``prefix``
    (the part of a system or user message that is shared by many requests and
    worth keeping in the engine's prefix cache)."""

    role: str | None = None
    content: str | None = None
    prefix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The message as an OpenAI chat message."""
        return {"role": self.role, "content": self.content}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoleMessage:
        """A message from an OpenAI chat message (the matching subclass for the
        ``user``, ``system`` and ``assistant`` roles)."""
        role, content = data.get("role"), data.get("content")
        if role == "assistant":
            return AssistantMessage(
                content,
                reasoning=data.get("reasoning"),
                reasoning_content=data.get("reasoning_content"),
                tool_calls=data.get("tool_calls"),
            )
        if role == "user":
            return UserMessage(content)
        if role == "system":
            return SystemMessage(content)
        if role == "tool":
            return ToolMessage(content, tool_call_id=data.get("tool_call_id"))
        return cls(role, content)

    def __str__(self) -> str:
        return json.dumps({"role": self.role, "content": self.content})


@dataclasses.dataclass(init=False)
class UserMessage(RoleMessage):
    def __init__(self, content: str | None, prefix: str | None = None) -> None:
        RoleMessage.__init__(self, "user", content, prefix)


@dataclasses.dataclass(init=False)
class SystemMessage(RoleMessage):
    def __init__(self, content: str | None, prefix: str | None = None) -> None:
        RoleMessage.__init__(self, "system", content, prefix)


@dataclasses.dataclass(init=False)
class AssistantMessage(RoleMessage):
    """The assistant's turn: its text, the model's reasoning when the engine
    separates it, the tool calls it asked for, and why generation stopped."""

    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[Any] | None = None
    finish_reason: str | None = None

    def __init__(
        self,
        content: str | None,
        reasoning: str | None = None,
        reasoning_content: str | None = None,
        tool_calls: list[Any] | None = None,
        finish_reason: str | None = None,
    ) -> None:
        RoleMessage.__init__(self, "assistant", content, None)
        self.reasoning = reasoning
        self.reasoning_content = reasoning_content
        self.tool_calls = tool_calls
        self.finish_reason = finish_reason

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.tool_calls is not None:
            out["tool_calls"] = [_call_dict(c) for c in self.tool_calls]
        return out

    def __str__(self) -> str:
        return json.dumps(
            {
                "role": "assistant",
                "content": self.content,
                "reasoning": self.reasoning,
                "reasoning_content": self.reasoning_content,
                "tool_calls": None
                if self.tool_calls is None
                else [str(c) for c in self.tool_calls],
            }
        )


@dataclasses.dataclass(init=False)
class ToolMessage(RoleMessage):
    """A tool's result, answering the assistant's call ``tool_call_id``."""

    tool_call_id: str | None = None

    def __init__(self, content: str | None, tool_call_id: str | None = None) -> None:
        RoleMessage.__init__(self, "tool", content, None)
        self.tool_call_id = tool_call_id

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


def _call_dict(call: Any) -> Any:
    if isinstance(call, ToolCall):
        return call.to_dict()
    return call


class ToolDescription:
    """A tool a chat model may call: ``name``, ``description`` and its
    ``parameters`` (JSON-schema properties).  Subclasses render it for an API."""

    def __init__(self, name: str, description: str, parameters: dict[str, Any]) -> None:
        self.name = name
        self.description = description
        self.parameters = parameters

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} does not say how to render itself")


class OpenAIToolDescription(ToolDescription):
    """A tool in the OpenAI ``tools`` format (``{"type": "function", ...}``)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": {"type": "object", "properties": self.parameters},
            },
        }


def _message(value: RoleMessage | Mapping[str, Any]) -> RoleMessage:
    return value if isinstance(value, RoleMessage) else RoleMessage.from_dict(value)


@dataclasses.dataclass(eq=False)
class ChatTask(StreamGenerationTask):
    """A conversation for the model to continue (TensorRT-LLM compatible).

    Inputs: ``messages`` (:class:`RoleMessage` objects; plain OpenAI dicts are
    accepted and converted), ``tools`` (tool descriptions offered to the model)
    and the sampling fields of :class:`GenerationTask`.  The chat handler runs
    the whole turn and appends the assistant's :class:`AssistantMessage` to
    ``messages``; ``output_str``, ``finish_reason`` and the token counts are
    filled as for a generation.  A generator controller's yield of a chat task
    returns when the turn is complete (it is not stepped like a
    :class:`StreamGenerationTask`).
    """

    messages: list[Any] = dataclasses.field(default_factory=list)
    tools: Any = None
    enable_token_counting: bool = False
    reasoning_tokens_num: int = 0
    tool_calls: list[ToolCall] | None = None  # output: the calls of the last turn
    sub_request_markers: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    unique_id: int | None = None

    input_fields: ClassVar[tuple[str, ...]] = (
        *StreamGenerationTask.input_fields,
        "tools",
    )

    def messages_to_dict_content(self, start_index: int = 0) -> list[dict[str, Any]]:
        """``messages[start_index:]`` as OpenAI dicts, skipping those without content."""
        return [
            m.to_dict() for m in map(_message, self.messages[start_index:]) if m.content is not None
        ]

    def add_message(self, message: RoleMessage) -> None:
        self.messages.append(message)

    def add_messages(self, messages: Sequence[RoleMessage]) -> None:
        self.messages.extend(messages)

    @classmethod
    def create_from_prompt(
        cls,
        user_prompt: str | Sequence[Mapping[str, Any]] | None,
        system_prompts: Sequence[RoleMessage] | None = None,
        tools: Any = None,
    ) -> ChatTask:
        """A chat of the ``system_prompts`` then ``user_prompt`` (a string, or a
        list of OpenAI messages appended as they are)."""
        task = cls()
        task.messages.extend(system_prompts or ())
        if isinstance(user_prompt, str):
            task.add_message(UserMessage(user_prompt))
        elif user_prompt is not None:
            task.messages.extend(_message(m) for m in user_prompt)
        task.tools = tools
        return task

    @classmethod
    def create_from_messages(cls, messages: list[RoleMessage], tools: Any = None) -> ChatTask:
        """A chat over ``messages`` (the list itself: the handler appends to it)."""
        task = cls()
        task.messages = messages
        task.tools = tools
        return task

    def inputs(self) -> dict[str, Any]:
        out = super().inputs()
        out["messages"] = [_message(m).to_dict() for m in self.messages]
        if self.tools is not None:
            out["tools"] = [
                t.to_dict() if isinstance(t, ToolDescription) else t for t in self.tools
            ]
        return out

    @property
    def prompt(self) -> list[dict[str, Any]]:
        return self.messages_to_dict_content()

    def validate(self) -> None:
        # what a prompt means is the controller's business: only the types that
        # would break the handler are refused
        Task.validate(self)
        name = type(self).__name__
        if not isinstance(self.messages, list):
            raise InvalidTaskError(f"{name}.messages", "must be a list of RoleMessage")
        for i, m in enumerate(self.messages):
            if not isinstance(m, (RoleMessage, Mapping)):
                raise InvalidTaskError(
                    f"{name}.messages", f"message {i} must be a RoleMessage, got {m!r}"
                )

    def tool_dicts(self) -> list[dict[str, Any]]:
        """``tools`` as OpenAI ``{"type": "function", ...}`` dicts."""
        return [
            t.to_dict() if isinstance(t, ToolDescription) else dict(t) for t in self.tools or ()
        ]

    def engine_messages(self) -> list[dict[str, Any]]:
        """The conversation as OpenAI message dicts (``tool_calls`` and
        ``tool_call_id`` included), skipping messages with neither content nor
        tool calls."""
        out: list[dict[str, Any]] = []
        for m in map(_message, self.messages):
            calls = getattr(m, "tool_calls", None)
            if m.content is None and not calls:
                continue
            d: dict[str, Any] = {"role": str(m.role), "content": m.content or ""}
            if calls:
                d["tool_calls"] = [_call_dict(c) for c in calls]
            call_id = getattr(m, "tool_call_id", None)
            if call_id is not None:
                d["tool_call_id"] = call_id
            out.append(d)
        return out

    def rendered_messages(self) -> list[dict[str, str]]:
        """What an engine without a tool-call API renders (:func:`render_messages`):
        the tools offered in the system message, the assistant's tool calls as
        ``<tool_call>`` blocks, tool results as ``tool`` messages."""
        request = self.engine_request(SamplingParams(max_tokens=1), stream=False)
        return render_messages(request.messages or (), request.tools)

    def request_inputs(self) -> dict[str, Any]:
        return {"messages": self.engine_messages(), "tools": self.tool_dicts() or None}
