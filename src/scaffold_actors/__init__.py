"""scaffold-actors: inference-time compute over LLMs on trio structured concurrency.

Native controllers are async functions (or objects with an async ``run``) that get
a :class:`RequestContext`; TensorRT-LLM style generator controllers live in
:mod:`scaffold_actors.compat`.  Both run on the same runtime:
:class:`AsyncScaffoldingLlm` (trio or asyncio) or :class:`ScaffoldingLlm`
(blocking, with its own event-loop thread).
"""

from engine_bridge import FunctionCall, ToolCall, parse_tool_calls

from ._budget import TokenBudget, TokenBudgetExhaustedError
from ._chat import (
    AssistantMessage,
    ChatTask,
    OpenAIToolDescription,
    RoleMessage,
    SystemMessage,
    ToolDescription,
    ToolMessage,
    UserMessage,
)
from ._context import Handle, Parallel, RequestContext
from ._controller import NativeController
from ._engine_worker import EngineWorker
from ._errors import (
    CancelGraceExceededWarning,
    EngineError,
    InvalidTaskError,
    RequestCancelledError,
    RuntimeClosedError,
    ScaffoldError,
    TaskFailedError,
    TaskNotSupportedError,
    TooManyRequestsError,
    UnknownWorkerTagError,
)
from ._hints import DropKVCacheTask, TokenizeTask
from ._mcp import MCPCallTask, MCPListTask, MCPServerError, MCPWorker
from ._result import ScaffoldingResult
from ._reward_worker import RewardWorker
from ._runtime import AsyncScaffoldingLlm
from ._scope import ExecutionScope, current_scope
from ._self_verifier import SelfVerifier
from ._sync import ScaffoldingLlm
from ._task_context import TaskContext, task_context
from ._tasks import (
    GenerationTask,
    RewardTask,
    ScaffoldingOutput,
    StreamGenerationTask,
    Task,
    TaskStatus,
    ToolCallTask,
)
from ._tools import PythonTool, ToolWorker
from ._trace import ExecutionTrace, ReplayMismatchError, ReplayWorker, TaskRecord, TokenUsage
from ._worker import Worker

__version__ = "0.1.0"

__all__ = [
    "AssistantMessage",
    "AsyncScaffoldingLlm",
    "CancelGraceExceededWarning",
    "ChatTask",
    "DropKVCacheTask",
    "EngineError",
    "EngineWorker",
    "ExecutionScope",
    "ExecutionTrace",
    "FunctionCall",
    "GenerationTask",
    "Handle",
    "InvalidTaskError",
    "MCPCallTask",
    "MCPListTask",
    "MCPServerError",
    "MCPWorker",
    "NativeController",
    "OpenAIToolDescription",
    "Parallel",
    "PythonTool",
    "ReplayMismatchError",
    "ReplayWorker",
    "RequestCancelledError",
    "RequestContext",
    "RewardTask",
    "RewardWorker",
    "RoleMessage",
    "RuntimeClosedError",
    "ScaffoldError",
    "ScaffoldingLlm",
    "ScaffoldingOutput",
    "ScaffoldingResult",
    "SelfVerifier",
    "StreamGenerationTask",
    "SystemMessage",
    "Task",
    "TaskContext",
    "TaskFailedError",
    "TaskNotSupportedError",
    "TaskRecord",
    "TaskStatus",
    "TokenBudget",
    "TokenBudgetExhaustedError",
    "TokenUsage",
    "TokenizeTask",
    "TooManyRequestsError",
    "ToolCall",
    "ToolCallTask",
    "ToolDescription",
    "ToolMessage",
    "ToolWorker",
    "UnknownWorkerTagError",
    "UserMessage",
    "Worker",
    "current_scope",
    "parse_tool_calls",
    "task_context",
]
