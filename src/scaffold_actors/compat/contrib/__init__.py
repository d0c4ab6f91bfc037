"""TensorRT-LLM Scaffolding's ``contrib`` projects that run here
(``tensorrt_llm.scaffolding.contrib.*`` under the compat alias).

As TensorRT-LLM's, this namespace also re-exports every public name of
:mod:`scaffold_actors.compat`, and the names its ``contrib/__init__`` has
offered over its releases:

* :mod:`.AsyncGeneration`: ``StreamGenerationTask``, ``stream_generation_handler``.
* :mod:`.DeepConf`: ``DeepConfOfflineController``, ``DeepConfOnlineController`` and
  their majority-vote controllers (Deep Think with Confidence).
* :mod:`.Dynasor`: ``DynasorGenerationController`` (Dynasor-CoT), ``equal_group``.
* :mod:`.a2a`: delegate to remote agents (``A2AController``, ``A2AWorker``,
  ``A2AListTask``, ``A2ASendTask``, ``AgentInfo``).
* :mod:`.mcp`: the early MCP project (``MCPController``, ``MCPWorker``,
  ``MCPCallTask``, ``MCPListTask``, ``chat_task.ChatTask``).

What ``contrib`` holds beyond these is listed, with its native counterpart, in
docs/porting-from-tensorrt-llm.md.
"""

from __future__ import annotations

from .. import *  # noqa: F403 - TensorRT-LLM's contrib namespace re-exports the package's
from .. import __all__ as _package_names
from .AsyncGeneration import stream_generation_handler
from .Dynasor import DynasorGenerationController
from .mcp import MCPController

# (StreamGenerationTask comes with the package's names: it is the core task)
__all__ = [
    *_package_names,
    "DynasorGenerationController",
    "MCPController",
    "stream_generation_handler",
]
