"""TensorRT-LLM Scaffolding's early MCP contrib project, on the core MCP worker."""

from .chat_task import ChatTask
from .mcp_controller import MCPController
from .mcp_task import MCPCallTask, MCPListTask
from .mcp_worker import MCPWorker

__all__ = ["ChatTask", "MCPCallTask", "MCPController", "MCPListTask", "MCPWorker"]
