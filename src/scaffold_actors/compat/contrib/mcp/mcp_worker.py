"""``tensorrt_llm.scaffolding.contrib.mcp.mcp_worker``: the core MCP worker."""

from ...._mcp import MCPWorker

__all__ = ["MCPWorker"]
