"""Engines behind scaffold-actors workers.

Every engine implements :class:`Engine`: ``async with engine:`` starts it,
``open_stream(request)`` streams :class:`EngineDelta` values and aborts the request
when the block exits.  Engines that need heavy optional dependencies (transformers,
TensorRT-LLM) are imported lazily on first attribute access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._engines._hf import (
        HFEngine,
        conversion_cache_folder,
        conversion_cache_root,
        embedded_model_path,
    )
    from ._engines._openai import OpenAIEngine
    from ._engines._trtllm import TRTLLMEngine
    from ._scaling._process import ProcessEngine
    from ._scaling._ray import RayEngine, RayPlacement

from ._bridge import first_error, raise_single
from ._engines._simulated import CostModel, SimulatedCall, SimulatedEngine, SimulatedOutput
from ._protocol import Engine, StartedStream, StartsStreams
from ._scaling._pool import EnginePool, Replica, ReplicaState, prompt_key
from ._toolcalls import (
    FunctionCall,
    ToolCall,
    answer_tool_calls,
    parse_tool_calls,
    render_messages,
    tool_instructions,
)
from ._types import (
    SAMPLING_FIELDS,
    AbortNotAcknowledgedWarning,
    ChatMessage,
    EngineClosedError,
    EngineDelta,
    EngineError,
    EngineRequest,
    InvalidRequestError,
    KVCacheDrop,
    NotSupportedError,
    PrefixGroup,
    SamplingParams,
    TopLogprobs,
    check_sampling_field,
)

__all__ = [
    "SAMPLING_FIELDS",
    "AbortNotAcknowledgedWarning",
    "ChatMessage",
    "CostModel",
    "Engine",
    "EngineClosedError",
    "EngineDelta",
    "EngineError",
    "EnginePool",
    "EngineRequest",
    "FunctionCall",
    "HFEngine",
    "InvalidRequestError",
    "KVCacheDrop",
    "NotSupportedError",
    "OpenAIEngine",
    "PrefixGroup",
    "ProcessEngine",
    "RayEngine",
    "RayPlacement",
    "Replica",
    "ReplicaState",
    "SamplingParams",
    "SimulatedCall",
    "SimulatedEngine",
    "SimulatedOutput",
    "StartedStream",
    "StartsStreams",
    "TRTLLMEngine",
    "ToolCall",
    "TopLogprobs",
    "answer_tool_calls",
    "check_sampling_field",
    "conversion_cache_folder",
    "conversion_cache_root",
    "embedded_model_path",
    "first_error",
    "parse_tool_calls",
    "prompt_key",
    "raise_single",
    "render_messages",
    "tool_instructions",
]

# name -> private module, imported on first access (keeps torch/transformers optional)
_LAZY: dict[str, str] = {
    "HFEngine": "._engines._hf",
    "OpenAIEngine": "._engines._openai",
    "ProcessEngine": "._scaling._process",
    "RayEngine": "._scaling._ray",
    "RayPlacement": "._scaling._ray",
    "TRTLLMEngine": "._engines._trtllm",
    "embedded_model_path": "._engines._hf",
    "conversion_cache_folder": "._engines._hf",
    "conversion_cache_root": "._engines._hf",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine_bridge' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)
