"""TensorRT-LLM's worker classes by name, mapped onto this project's engines."""

from __future__ import annotations

from typing import Any

from .._engine_worker import EngineWorker

__all__ = ["OpenaiWorker", "TRTOpenaiWorker"]


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
