"""Tool calls written by a model into its text, and the instructions that ask
for them (prompt-based tool calling, for engines without a tool-call API).

The format is the widespread ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
(Hermes, Qwen).  Parsing is bounded: it scans at most ``MAX_SCAN_CHARS`` of the
text, at most ``MAX_CALLS`` blocks, and decodes no block over ``MAX_CALL_CHARS``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

__all__ = [
    "FunctionCall",
    "ToolCall",
    "answer_tool_calls",
    "check_tools",
    "parse_tool_calls",
    "render_messages",
    "tool_instructions",
]

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_SCAN_CHARS = 200_000
MAX_CALLS = 16
MAX_CALL_CHARS = 32_000


@attrs.frozen
class FunctionCall:
    """The function part of a tool call: ``name`` and ``arguments`` (a JSON
    object, as text: the OpenAI shape)."""

    name: str
    arguments: str


@attrs.frozen
class ToolCall:
    """One tool call the model asked for (``tool_call.function.name`` and
    ``.arguments`` as in the OpenAI client, which TensorRT-LLM programs read)."""

    id: str
    function: FunctionCall
    type: str = "function"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "function": {"name": self.function.name, "arguments": self.function.arguments},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToolCall:
        """From the OpenAI shape ``{"id", "type", "function": {"name", "arguments"}}``
        (``arguments`` as JSON text, or an object)."""
        fn = data.get("function") or {}
        args = fn.get("arguments", "{}")
        if not isinstance(args, str):
            args = json.dumps(args, ensure_ascii=False)
        return cls(str(data.get("id") or ""), FunctionCall(str(fn.get("name") or ""), args))

    def markup(self) -> str:
        """The call as a model writes it (see :func:`tool_instructions`)."""
        try:
            args: Any = json.loads(self.function.arguments)
        except ValueError:
            args = self.function.arguments
        body = json.dumps({"name": self.function.name, "arguments": args}, ensure_ascii=False)
        return f"{OPEN}{body}{CLOSE}"

    def parsed_arguments(self) -> dict[str, Any]:
        """``arguments`` decoded (an object; the parser only accepts objects)."""
        value = json.loads(self.function.arguments)
        assert isinstance(value, dict)
        return value


def tool_instructions(tools: Sequence[Mapping[str, Any]]) -> str:
    """A system-message text offering ``tools`` (OpenAI ``{"type": "function",
    "function": {...}}`` dicts) and saying how to call them."""
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return (
        "You can call these tools (JSON function signatures):\n<tools>\n"
        f"{listing}\n</tools>\n"
        "To call one, write a JSON object with its name and arguments inside "
        f'{OPEN}{CLOSE} tags, for example {OPEN}{{"name": "tool_name", "arguments": '
        f"{{...}}}}{CLOSE}, one block per call, and nothing after the last block; "
        "the results will come back in the next message. Otherwise answer directly."
    )


def parse_tool_calls(text: str, first_id: int = 0) -> tuple[str, list[ToolCall]]:
    """Split ``text`` into its plain content and the tool calls written in it.

    A block that is not a JSON object with a string ``name`` and an object
    ``arguments`` stays in the content (the model sees it was not a call).
    Linear in ``len(text)``; see the module's bounds.
    """
    scan = text[:MAX_SCAN_CHARS]
    content: list[str] = []
    calls: list[ToolCall] = []
    pos = 0
    while len(calls) < MAX_CALLS:
        start = scan.find(OPEN, pos)
        if start == -1:
            break
        end = scan.find(CLOSE, start + len(OPEN))
        if end == -1:
            break
        body = scan[start + len(OPEN) : end].strip()
        call = _call(body, f"call_{first_id + len(calls)}")
        content.append(scan[pos:start])
        if call is None:
            content.append(scan[start : end + len(CLOSE)])
        else:
            calls.append(call)
        pos = end + len(CLOSE)
    content.append(text[pos:])
    return "".join(content).strip(), calls


def answer_tool_calls(
    text: str, reported: Sequence[ToolCall] | None, offered: bool
) -> tuple[str, list[ToolCall]]:
    """An answer's text and tool calls: the calls an engine with a tool-call API
    ``reported`` (the text as is), else, when tools were ``offered``, the
    ``<tool_call>`` blocks written in the text (:func:`parse_tool_calls`)."""
    if reported:
        return text, list(reported)
    if offered:
        return parse_tool_calls(text)
    return text, []


def _call(body: str, call_id: str) -> ToolCall | None:
    if len(body) > MAX_CALL_CHARS:
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    args = value.get("arguments", {})
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(call_id, FunctionCall(value["name"], json.dumps(args, ensure_ascii=False)))


def check_tools(value: Any) -> tuple[dict[str, Any], ...] | None:
    """``tools`` as a tuple of OpenAI function tools; raises ``ValueError`` naming
    what is wrong (the caller turns it into its own error type)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"must be a list of tools, got {type(value).__name__}")
    out = []
    for i, tool in enumerate(value):
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if (
            not isinstance(tool, Mapping)
            or tool.get("type", "function") != "function"
            or not isinstance(fn, Mapping)
            or not isinstance(fn.get("name"), str)
            or not fn["name"]
        ):
            raise ValueError(
                f'tool {i} must be {{"type": "function", "function": {{"name": ...}}}}, got {tool!r}'
            )
        out.append(dict(tool))
    return tuple(out)


def render_messages(
    messages: Sequence[Any], tools: Sequence[Mapping[str, Any]] | None
) -> list[dict[str, str]]:
    """Plain ``{"role", "content"}`` messages for a chat template without a tool
    API: ``tools`` offered in the (first) system message, each assistant's tool
    calls written as ``<tool_call>`` blocks after its text, tool results kept as
    ``tool`` messages.  ``messages`` holds :class:`ChatMessage`-like objects
    (``role``, ``content``, ``tool_calls``)."""
    out: list[dict[str, str]] = []
    for m in messages:
        content = m.content or ""
        calls = getattr(m, "tool_calls", None)
        if calls:
            marks = [
                c.markup() if isinstance(c, ToolCall) else ToolCall.from_dict(c).markup()
                for c in calls
            ]
            content = "\n".join([content, *marks]).strip()
        out.append({"role": m.role, "content": content})
    if tools:
        offer = tool_instructions(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{offer}"}
        else:
            out.insert(0, {"role": "system", "content": offer})
    return out
