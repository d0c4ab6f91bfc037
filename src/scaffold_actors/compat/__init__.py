"""TensorRT-LLM Scaffolding compatible API.

Controllers and workers written for ``tensorrt_llm.scaffolding`` run here by
changing only the import::

    from scaffold_actors.compat import (Controller, NativeGenerationController,
                                        MajorityVoteController, ScaffoldingLlm, ...)

:class:`ScaffoldingLlm` here runs its loop on asyncio by default, so worker
handlers written for asyncio (``asyncio.sleep``, ``asyncio.gather``,
``openai.AsyncOpenAI``) keep working.
"""

from __future__ import annotations

from typing import Any

from .._chat import (
    AssistantMessage,
    ChatTask,
    OpenAIToolDescription,
    RoleMessage,
    SystemMessage,
    ToolDescription,
    ToolMessage,
    UserMessage,
)
from .._hints import DropKVCacheTask, TokenizeTask
from .._mcp import MCPCallTask, MCPListTask, MCPWorker
from .._result import ScaffoldingResult
from .._scope import ExecutionScope, current_scope
from .._sync import ScaffoldingLlm as _SyncScaffoldingLlm
from .._tasks import (
    GenerationTask,
    RewardTask,
    ScaffoldingOutput,
    StreamGenerationTask,
    Task,
    TaskStatus,
    ToolCallTask,
)
from .._worker import Worker
from ._alias import install_trtllm_alias, real_trtllm_installed
from ._benchmark import ScaffoldingBenchRequest, async_scaffolding_benchmark
from ._config import (
    CONTROLLER_REGISTRY,
    build_controller,
    load_controller_config,
    register_controller,
)
from ._controllers import (
    BestOfNController,
    ChatWithMCPController,
    Controller,
    MajorityVoteController,
    NativeChatController,
    NativeGenerationController,
    NativeRewardController,
    ParallelProcess,
    PRMController,
)
from ._math import (
    extract_answer_from_boxed,
    extract_answer_with_regex,
    get_digit_majority_vote_result,
    get_majority_result,
)
from ._prompts import system_prompt
from ._pytorch_worker import PyTorchWorker
from ._replay import (
    QueueExecutor,
    QueueManager,
    ReplayEngine,
    ReplayGenerationStats,
    make_seeded_rng_factory,
)
from ._task_collection import (
    ChatCollection,
    ChatTokenCounter,
    DropKVCacheWorkerTag,
    GenerationTokenCounter,
    QueryCollector,
    SubRequestMarker,
    TaskCollection,
    TaskMetricsCollector,
    TaskTimer,
    TokenizeWorkerTag,
    drop_kv_cache_scope,
    sub_request_node,
    with_task_collection,
)
from ._tracing import (
    ExecutionTrace,
    ExecutionTracer,
    TraceEvent,
    tokenize_trace_scope,
    with_execution_tracing,
)
from ._workers import (
    ApiaryMCPWorker,
    OpenaiWorker,
    TRTLLMWorker,
    TRTOpenaiWorker,
    set_trtllm_worker_engine,
    worker_engine_factory,
)

__all__ = [
    "CONTROLLER_REGISTRY",
    "ApiaryMCPWorker",
    "AssistantMessage",
    "BestOfNController",
    "ChatCollection",
    "ChatTask",
    "ChatTokenCounter",
    "ChatWithMCPController",
    "Controller",
    "DropKVCacheTask",
    "DropKVCacheWorkerTag",
    "ExecutionScope",
    "ExecutionTrace",
    "ExecutionTracer",
    "GenerationTask",
    "GenerationTokenCounter",
    "MCPCallTask",
    "MCPListTask",
    "MCPWorker",
    "MajorityVoteController",
    "NativeChatController",
    "NativeGenerationController",
    "NativeRewardController",
    "OpenAIToolDescription",
    "OpenaiWorker",
    "PRMController",
    "ParallelProcess",
    "PyTorchWorker",
    "QueryCollector",
    "QueueExecutor",
    "QueueManager",
    "ReplayEngine",
    "ReplayGenerationStats",
    "RewardTask",
    "RoleMessage",
    "ScaffoldingBenchRequest",
    "ScaffoldingLlm",
    "ScaffoldingOutput",
    "ScaffoldingResult",
    "StreamGenerationTask",
    "SubRequestMarker",
    "SystemMessage",
    "TRTLLMWorker",
    "TRTOpenaiWorker",
    "Task",
    "TaskCollection",
    "TaskMetricsCollector",
    "TaskStatus",
    "TaskTimer",
    "TokenizeTask",
    "TokenizeWorkerTag",
    "ToolCallTask",
    "ToolDescription",
    "ToolMessage",
    "TraceEvent",
    "UserMessage",
    "Worker",
    "async_scaffolding_benchmark",
    "build_controller",
    "current_scope",
    "drop_kv_cache_scope",
    "extract_answer_from_boxed",
    "extract_answer_with_regex",
    "get_digit_majority_vote_result",
    "get_majority_result",
    "install_trtllm_alias",
    "load_controller_config",
    "make_seeded_rng_factory",
    "real_trtllm_installed",
    "register_controller",
    "set_trtllm_worker_engine",
    "sub_request_node",
    "system_prompt",
    "tokenize_trace_scope",
    "with_execution_tracing",
    "with_task_collection",
    "worker_engine_factory",
]


class _Result(ScaffoldingResult):
    """A compat request's result: iterating it yields the result itself, its
    ``outputs[0]`` the latest output (TensorRT-LLM's iteration)."""

    iterates_results = True


class ScaffoldingLlm(_SyncScaffoldingLlm):
    """:class:`scaffold_actors.ScaffoldingLlm` with an asyncio loop by default.

    As TensorRT-LLM's: ``for``/``async for`` over a result yields the result
    itself (``result.outputs[0].text`` the latest output), and
    ``shutdown(shutdown_wokers=True)`` (TensorRT-LLM's own tests spell it so)
    is ``shutdown_workers``.
    """

    default_backend = "asyncio"
    default_check_prompts = False  # what a prompt means is the controller's business
    output_task_collection = False

    def __init__(self, prototype_controller: Any, workers: Any, **options: Any) -> None:
        super().__init__(prototype_controller, workers, **options)
        self._core.result_class = _Result

    def shutdown(self, shutdown_workers: bool = False, **legacy: bool) -> None:
        unknown = set(legacy) - {"shutdown_wokers"}
        if unknown:
            raise TypeError(f"shutdown() got an unexpected keyword argument {unknown.pop()!r}")
        super().shutdown(shutdown_workers or legacy.get("shutdown_wokers", False))

    def enable_output_task_collection(self) -> None:
        """TensorRT-LLM compatible.  Results here always carry the controller's
        ``task_collections``; this only records that they were asked for."""
        self.output_task_collection = True
