"""The contrib projects' chat task: a :class:`GenerationTask` over OpenAI message
dicts with the tools offered (``tensorrt_llm.scaffolding.contrib.mcp.chat_task``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ...._tasks import GenerationTask

__all__ = ["ChatTask", "with_defaults"]


@dataclasses.dataclass(eq=False)
class ChatTask(GenerationTask):
    """One chat turn over ``messages`` (OpenAI ``{"role", "content"}`` dicts)
    with ``tools`` (OpenAI function descriptions) offered to the model.

    A worker fills ``output_str``, ``finish_reason`` (``"tool_calls"`` when the
    model asked for tools) and ``tool_calls`` (objects with
    ``.function.name`` / ``.function.arguments``, the OpenAI client's shape).
    Unlike the core :class:`~scaffold_actors.compat.ChatTask`, the reply is not
    appended to ``messages``.
    """

    tools: Any = None
    tool_calls: Any = None

    @staticmethod
    def create_from_prompt(  # type: ignore[override]
        messages: list[dict[str, Any]], prompt: str | None, tools: Any = None
    ) -> ChatTask:
        """A turn over ``messages`` followed by the user's ``prompt`` (appended to
        the caller's list, which the task then holds)."""
        messages.append({"role": "user", "content": prompt})
        return ChatTask.from_messages(messages, tools)

    @staticmethod
    def from_messages(messages: list[dict[str, Any]], tools: Any = None) -> ChatTask:
        task = ChatTask()
        task.messages = messages
        task.tools = tools
        return task

    def request_inputs(self) -> dict[str, Any]:
        return {"messages": self.messages, "tools": self.tools or None}


def with_defaults(task: ChatTask, params: dict[str, Any] | None) -> ChatTask:
    """``task`` with ``params`` (a controller's ``custom_sampling_params``) set
    on the sampling fields it leaves unset (``None``)."""
    for key, value in (params or {}).items():
        if hasattr(task, key) and getattr(task, key) is None:
            setattr(task, key, value)
    return task
