"""The early MCP project's controller (``contrib.mcp.mcp_controller``)."""

from __future__ import annotations

import copy
import enum
from collections.abc import Generator, Mapping
from typing import Any

from ...._mcp import openai_tools
from ...._tasks import Task
from ..._controllers import Controller
from .chat_task import ChatTask, with_defaults
from .mcp_task import MCPCallTask, MCPListTask

__all__ = ["MCPController"]

_SYSTEM = (
    "You are a helpful assistant with tools. When a tool fits the question, call it; "
    "once you have its result, answer the user briefly and naturally from it, "
    "without repeating the raw data. Use only the tools listed."
)


class MCPController(Controller):
    """List the MCP tools, let the model pick calls, run them, and answer from
    their results (one round of tool use, as the contrib project does).

    Stricter than the project: a failed tool call fails the request (it is
    raised at the ``yield``), and the answer is built from every call's result,
    not only the first's."""

    class WorkerTag(enum.Enum):
        GENERATION = "generation"
        MCP = "mcp"

    def __init__(self, custom_sampling_params: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.custom_sampling_params = (
            copy.deepcopy(dict(custom_sampling_params)) if custom_sampling_params else None
        )

    def _sampled(self, task: ChatTask) -> ChatTask:
        return with_defaults(task, self.custom_sampling_params)

    def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
        if len(tasks) != 1:
            raise ValueError(f"MCPController takes one task at a time, got {len(tasks)}")
        result_task: Any = tasks[0]
        listing = MCPListTask.create_mcptask()
        listing.worker_tag = self.WorkerTag.MCP
        yield [listing]
        tools = openai_tools(listing.result_tools)
        messages: list[dict[str, Any]] = [{"role": "system", "content": _SYSTEM}]
        chat = self._sampled(ChatTask.create_from_prompt(messages, result_task.input_str, tools))
        chat.worker_tag = self.WorkerTag.GENERATION
        yield [chat]
        if chat.finish_reason != "tool_calls" or not chat.tool_calls:
            result_task.output_str = chat.output_str
            return
        calls = [
            MCPCallTask.create_mcptask(c.function.name, c.function.arguments)
            for c in chat.tool_calls
        ]
        for call in calls:
            call.worker_tag = self.WorkerTag.MCP
        yield calls
        results = "\n".join(c.result_str for c in calls if c.result_str)
        messages.append({"role": "assistant", "content": chat.output_str or ""})
        final = self._sampled(ChatTask.create_from_prompt(messages, results, tools))
        final.worker_tag = self.WorkerTag.GENERATION
        yield [final]
        result_task.output_str = final.output_str
