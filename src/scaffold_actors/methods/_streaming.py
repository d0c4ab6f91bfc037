"""Streaming generation that the method cancels on a budget or a condition."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from .._context import RequestContext
from .._tasks import GenerationTask, ScaffoldingOutput, StreamGenerationTask
from ._sampler import Sampler, result_from

__all__ = ["StreamUntil"]


@attrs.frozen
class StreamUntil:
    """Generate as a stream, consumed every ``streaming_step`` tokens, and cancel
    the generation (its engine request aborted) as soon as ``max_tokens``
    tokens arrived or ``stop_when(text_so_far)`` is true.  Each step is
    published as a partial output of the request.

    The result holds the text up to the cut; ``finish_reason`` is ``"budget"`` or
    ``"condition"`` when the method cut it, else the engine's.  ``details``:
    ``tokens``, ``steps``, ``cut`` (bool).

    This is TensorRT-LLM Scaffolding's AsyncGeneration example as a method.
    """

    sampler: Sampler = attrs.field(factory=Sampler)
    max_tokens: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1))
    )
    stop_when: Callable[[str], bool] | None = None
    streaming_step: int = attrs.field(default=8, validator=attrs.validators.ge(1))

    async def run(
        self, ctx: RequestContext, task: GenerationTask, /, **kwargs: Any
    ) -> GenerationTask:
        t = attrs.evolve(self.sampler, stream=True).prepare(task)
        assert isinstance(t, StreamGenerationTask)
        t.streaming_step = self.streaming_step
        reason: str | None = None
        steps = 0
        async with ctx.stream(t) as updates:
            async for partial in updates:
                steps += 1
                text = partial.output_str or ""
                ctx.emit(ScaffoldingOutput(text, list(partial.output_tokens or ()), finished=False))
                if partial.end_flag:
                    break
                if (
                    self.max_tokens is not None
                    and len(partial.output_tokens or ()) >= self.max_tokens
                ):
                    reason = "budget"
                    break
                if self.stop_when is not None and self.stop_when(text):
                    reason = "condition"
                    break
        # leaving the stream early has aborted the engine request
        out = result_from(
            task,
            t,
            {"tokens": len(t.output_tokens or ()), "steps": steps, "cut": reason is not None},
        )
        if reason is not None:
            out.finish_reason = reason
        return out
