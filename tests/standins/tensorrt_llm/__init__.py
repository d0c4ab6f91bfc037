"""Stand-in for the ``tensorrt_llm`` 1.x LLM API surface that TRTLLMEngine uses.

CPU only, no model: replies with a fixed text, a word per step, on the caller's
asyncio loop.  It reproduces the shapes and behaviours the engine relies on:
``LLM(model, kv_cache_config=..., **kwargs)``, ``llm.tokenizer``, ``llm.args.max_seq_len``,
``llm.generate_async(inputs, sampling_params=..., streaming=...)`` returning an
async-iterable ``RequestOutput`` (which needs a running asyncio loop), cumulative
``outputs[0]`` (``text``, ``token_ids``, ``logprobs`` as floats or
``{token_id: Logprob}`` dicts, ``finish_reason``), ``abort()``, ``shutdown()``,
stop strings excluded from the text, and ``SamplingParams`` validation.
"""

from .llmapi import (
    LLM,
    CompletionOutput,
    KvCacheConfig,
    Logprob,
    RequestOutput,
    SamplingParams,
)

__version__ = "1.0.0+standin"
__all__ = ["LLM", "CompletionOutput", "KvCacheConfig", "Logprob", "RequestOutput", "SamplingParams"]
