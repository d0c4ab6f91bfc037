"""Best-of-N with an outcome reward model, generation and scoring overlapping."""

from __future__ import annotations

from typing import Any

import attrs

from .._context import RequestContext
from .._tasks import GenerationTask, RewardTask, ScaffoldingOutput
from ._answers import cut_answer
from ._instructions import last_user_message
from ._sampler import Sampler, fresh_task, grouped, result_from, sample_count

__all__ = ["BestOfN"]


def question_of(task: GenerationTask) -> str:
    """The text a reward model scores against: the prompt or the last user message."""
    if task.input_str is not None:
        return task.input_str
    chat = list(task.messages or ())
    i = last_user_message(chat)
    if i is not None:
        return str(chat[i]["content"])
    raise ValueError("a reward model needs a text prompt or a user message to score against")


@attrs.frozen
class BestOfN:
    """Sample ``samples`` candidates with ``sampler`` and return the one the reward
    worker (``reward_tag``) scores highest.

    Each candidate is scored as soon as it is generated, so the reward model works
    while the other samples are still being generated.  Ties go to the candidate
    that finished first.  A candidate cut by ``max_tokens`` before a boxed answer
    is chosen only when every candidate was cut (an unfinished text is no
    answer, however it scores; as it is no vote in :class:`MajorityVote`).
    ``details`` holds ``scores`` (in finishing order), ``best_score``,
    ``samples_finished`` and ``cut_by_length`` (candidates cut before an answer).  A failing sample or score fails the
    request (the other samples are cancelled).

    Paper: Cobbe et al., "Training Verifiers to Solve Math Word Problems" (2021);
    Lightman et al., "Let's Verify Step by Step" (2023) for the reward-model setting.
    """

    sampler: Any = attrs.field(factory=Sampler)
    samples: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    reward_tag: Any = "reward"

    async def run(
        self,
        ctx: RequestContext,
        task: GenerationTask,
        /,
        samples: int | None = None,
        **kwargs: Any,
    ) -> GenerationTask:
        n = sample_count(self.samples, samples)
        question = question_of(task)
        scored: list[tuple[float, GenerationTask]] = []
        base = grouped(task, n)  # one prefix group: the engine computes the prompt once

        async def sample_and_score() -> None:
            out: GenerationTask = await self.sampler.run(ctx, fresh_task(base))
            reward = await ctx.run(
                RewardTask(
                    worker_tag=self.reward_tag,
                    input_str=question,
                    candidates=[out.output_str or ""],
                )
            )
            if not reward.scores:
                raise ValueError("the reward worker returned no score")
            scored.append((float(reward.scores[0]), out))
            ctx.emit(
                ScaffoldingOutput(
                    out.output_str or "",
                    finished=False,
                    details={
                        "scores": [s for s, _ in scored],
                        "samples_finished": len(scored),
                        "samples_requested": n,
                    },
                )
            )

        async with ctx.parallel() as par:
            for _ in range(n):
                par.start(sample_and_score)
        whole = [(s, out) for s, out in scored if not _cut(out)]
        # first maximum wins; a cut candidate only when all were cut
        best_score, best = max(whole or scored, key=lambda pair: pair[0])
        details = {
            "scores": [s for s, _ in scored],
            "best_score": best_score,
            "samples_finished": len(scored),
            "cut_by_length": len(scored) - len(whole),
        }
        return result_from(task, best, details)


def _cut(out: GenerationTask) -> bool:
    """Cut by ``max_tokens`` before a boxed answer."""
    return out.finish_reason == "length" and cut_answer(out.output_str) is None
