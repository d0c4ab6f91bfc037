"""TensorRT-LLM's worker classes by name, mapped onto this project's engines."""

from __future__ import annotations

from typing import Any

from .._engine_worker import EngineWorker

__all__ = ["OpenaiWorker", "TRTLLMWorker", "TRTOpenaiWorker"]


class OpenaiWorker(EngineWorker):
    """``OpenaiWorker(async_client, model)``: generation and chat tasks through an
    OpenAI-compatible server (TensorRT-LLM compatible).

    ``async_client`` is an ``openai.AsyncOpenAI`` client; its ``base_url`` and
    ``api_key`` are used by an :class:`engine_bridge.OpenAIEngine` (httpx,
    streaming, aborts on cancel, retries), which the runtime starts and stops.
    Unlike TensorRT-LLM's, a failed call raises :class:`EngineError` instead of
    printing and returning ``WORKER_EXECEPTION``.
    """

    def __init__(self, async_client: Any, model: str, **engine_options: Any) -> None:
        from engine_bridge import OpenAIEngine

        base_url = str(getattr(async_client, "base_url", "") or "")
        if not base_url:
            raise TypeError(
                f"async_client must be an openai.AsyncOpenAI client, got {async_client!r}"
            )
        api_key = getattr(async_client, "api_key", None) or None
        self.async_client = async_client
        self.model = model
        super().__init__(OpenAIEngine(base_url, model, api_key=api_key, **engine_options))


class TRTOpenaiWorker(OpenaiWorker):
    """:class:`OpenaiWorker` for ``trtllm-serve`` (``top_k`` is passed as the
    server's extension, as every request of :class:`OpenAIEngine` already does)."""


class TRTLLMWorker(EngineWorker):
    """``TRTLLMWorker(llm, tokenizer)``: generation, streaming and chat tasks on
    a ``tensorrt_llm.LLM`` (TensorRT-LLM compatible), through
    :class:`engine_bridge.TRTLLMEngine` (its own bridge thread; aborts confirmed
    by the executor's final response; logprobs never invented).

    ``llm`` stays the caller's (``shutdown()`` of this worker does not shut it
    down); the LLM's own tokenizer renders prompts, so ``tokenizer`` is kept only
    as an attribute.  :meth:`init_with_new_llm` makes a worker that owns its LLM.
    """

    def __init__(self, llm: Any, tokenizer: Any = None, **engine_options: Any) -> None:
        from engine_bridge import TRTLLMEngine

        self.llm = llm
        self.tokenizer = tokenizer
        self.own_llm = False
        super().__init__(TRTLLMEngine(llm=llm, **engine_options))

    @classmethod
    def init_with_new_llm(
        cls,
        model_dir: str,
        backend: str = "pytorch",
        max_batch_size: int = 32,
        max_num_tokens: int = 4096,
        kv_cache_free_gpu_memory_fraction: float = 0.9,
        disable_overlap_scheduler: bool = False,
        scheduler_config: Any = None,
    ) -> TRTLLMWorker:
        """A worker whose engine makes (and shuts down) its own ``LLM``."""
        from engine_bridge import TRTLLMEngine

        llm_kwargs: dict[str, Any] = {
            "backend": backend,
            "max_batch_size": max_batch_size,
            "max_num_tokens": max_num_tokens,
            "disable_overlap_scheduler": disable_overlap_scheduler,
        }
        if scheduler_config is not None:
            llm_kwargs["scheduler_config"] = scheduler_config
        engine = TRTLLMEngine(
            model_dir,
            free_gpu_memory_fraction=kv_cache_free_gpu_memory_fraction,
            llm_kwargs=llm_kwargs,
        )
        worker = cls.__new__(cls)
        EngineWorker.__init__(worker, engine)
        worker.llm, worker.tokenizer, worker.own_llm = None, None, True
        return worker
