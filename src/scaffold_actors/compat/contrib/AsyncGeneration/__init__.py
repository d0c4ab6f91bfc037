"""TensorRT-LLM Scaffolding's AsyncGeneration contrib project: streamed
generation a controller steps, and may cancel.

Here every :class:`~scaffold_actors.EngineWorker` streams a
:class:`StreamGenerationTask` itself (each yield returns once ``streaming_step``
new tokens arrived; ``cancel_flag`` aborts the request in the engine), so
:func:`stream_generation_handler` is that built-in handler: registering it on a
worker, as the project's examples do, changes nothing.
"""

from __future__ import annotations

from ...._engine_worker import EngineWorker
from ...._tasks import StreamGenerationTask, TaskStatus

__all__ = ["StreamGenerationTask", "stream_generation_handler"]


async def stream_generation_handler(worker: object, task: StreamGenerationTask) -> TaskStatus:
    """Stream ``task`` on ``worker``'s engine (an :class:`EngineWorker`'s own
    stream handler).  Raises :class:`TypeError` for a worker without an engine."""
    if not isinstance(worker, EngineWorker):
        raise TypeError(
            f"stream_generation_handler runs on an EngineWorker (TRTLLMWorker, OpenaiWorker, "
            f"...), not on {type(worker).__name__}"
        )
    return await worker.stream_generation_handler(task)
