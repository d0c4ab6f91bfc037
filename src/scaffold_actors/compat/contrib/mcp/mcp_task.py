"""The early MCP project's tasks (``tensorrt_llm.scaffolding.contrib.mcp.mcp_task``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ...._mcp import MCPCallTask as _CoreCall
from ...._mcp import MCPListTask as _CoreList

__all__ = ["MCPCallTask", "MCPListTask"]


@dataclasses.dataclass(eq=False)
class MCPCallTask(_CoreCall):
    """:class:`~scaffold_actors.compat.MCPCallTask` with the project's retry
    fields.  ``retry`` and ``delay`` are kept for its code; the MCP worker's own
    reconnection applies (a failed call raises, it is not retried blindly)."""

    retry: int | None = 1
    delay: float | None = 10

    @staticmethod
    def create_mcptask(
        tool_name: str, args: Any, retry: int = 1, delay: float = 1
    ) -> MCPCallTask:
        task = MCPCallTask()
        task.tool_name = tool_name
        task.args = args
        task.retry = retry
        task.delay = delay
        return task


@dataclasses.dataclass(eq=False)
class MCPListTask(_CoreList):
    """:class:`~scaffold_actors.compat.MCPListTask` (``result_tools``)."""

    result_str: str | None = None

    @staticmethod
    def create_mcptask() -> MCPListTask:
        return MCPListTask()
