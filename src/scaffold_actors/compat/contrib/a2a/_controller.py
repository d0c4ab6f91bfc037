"""The A2A controller: the model delegates to remote agents as tool calls."""

from __future__ import annotations

import copy
import enum
import json
from collections.abc import Generator, Mapping
from typing import Any

from ...._tasks import Task
from ..._controllers import Controller
from ..mcp.chat_task import ChatTask, with_defaults
from ._tasks import A2AListTask, A2ASendTask

__all__ = ["A2AController"]

_SYSTEM = (
    "You coordinate remote agents, offered below as tools. When an agent suits the "
    "request better than you do, call it with a short `message`. When its reply "
    "comes back, give the user a clear, short answer from it. Call only the agents listed."
)


def _as_tool(agent: Any) -> dict[str, Any]:
    """An agent as an OpenAI function taking one ``message``."""
    text = agent.description or f"Remote agent '{agent.name}'."
    if agent.skills:
        text += f" Skills: {', '.join(agent.skills)}."
    return {
        "type": "function",
        "function": {
            "name": agent.name,
            "description": text,
            "parameters": {
                "type": "object",
                "properties": {
                    "message": {"type": "string", "description": "what to ask the agent"}
                },
                "required": ["message"],
            },
        },
    }


def _message_of(arguments: Any) -> str:
    """The ``message`` of a call's JSON arguments; text that is not a JSON object
    is forwarded as it is (a model's malformed call still reaches the agent)."""
    if isinstance(arguments, str) and len(arguments) <= 1_000_000:
        try:
            parsed = json.loads(arguments)
        except ValueError:
            return arguments
        if isinstance(parsed, dict):
            return str(parsed.get("message", ""))
        return arguments
    if isinstance(arguments, dict):
        return str(arguments.get("message", ""))
    return ""


class A2AController(Controller):
    """Route a request to remote agents: list them, let the model choose by
    tool call, send each chosen agent its message, and let the model answer
    from the replies (its direct answer when it delegates to none)."""

    class WorkerTag(enum.Enum):
        GENERATION = "generation"
        A2A = "a2a"

    def __init__(self, custom_sampling_params: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.custom_sampling_params = (
            copy.deepcopy(dict(custom_sampling_params)) if custom_sampling_params else None
        )

    def _chat(self, messages: list[dict[str, Any]], prompt: str | None, tools: Any) -> ChatTask:
        task = ChatTask.create_from_prompt(messages, prompt, tools)
        task.worker_tag = self.WorkerTag.GENERATION
        return with_defaults(task, self.custom_sampling_params)

    def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
        if len(tasks) != 1:
            raise ValueError(f"A2AController takes one task at a time, got {len(tasks)}")
        result_task: Any = tasks[0]
        listing = A2AListTask.create_a2a_task(self.WorkerTag.A2A)
        yield [listing]
        tools = [_as_tool(agent) for agent in listing.result_agents or ()]
        messages: list[dict[str, Any]] = [{"role": "system", "content": _SYSTEM}]
        chat = self._chat(messages, result_task.input_str, tools)
        yield [chat]
        if chat.finish_reason != "tool_calls" or not chat.tool_calls:
            result_task.output_str = chat.output_str
            return
        sends = [
            A2ASendTask.create_a2a_task(
                c.function.name, _message_of(c.function.arguments), self.WorkerTag.A2A
            )
            for c in chat.tool_calls
        ]
        yield sends
        replies = "\n".join(s.output_str for s in sends if s.output_str)
        messages.append({"role": "assistant", "content": chat.output_str or ""})
        final = self._chat(messages, replies, tools)
        yield [final]
        result_task.output_str = final.output_str
