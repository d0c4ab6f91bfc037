"""TensorRT-LLM Scaffolding's ``contrib`` projects that run here
(``tensorrt_llm.scaffolding.contrib.*`` under the compat alias).

* :mod:`.a2a`: delegate to remote agents (``A2AController``, ``A2AWorker``,
  ``A2AListTask``, ``A2ASendTask``, ``AgentInfo``).
* :mod:`.mcp`: the early MCP project (``MCPController``, ``MCPWorker``,
  ``MCPCallTask``, ``MCPListTask``, ``chat_task.ChatTask``).

What ``contrib`` holds beyond these is listed, with its native counterpart, in
docs/porting-from-tensorrt-llm.md.
"""
