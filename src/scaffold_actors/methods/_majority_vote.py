"""Majority vote (self-consistency) over any sampler, with early stopping."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs

from .._context import RequestContext
from .._tasks import GenerationTask
from ._answers import extract_answer
from ._sampler import Sampler, fresh_task, result_from, sample_count

__all__ = ["MajorityVote", "vote_is_decided"]


def vote_is_decided(votes: Counter[str], remaining: int) -> bool:
    """True once the leading answer cannot be overtaken (nor tied) by the
    ``remaining`` votes still to come."""
    if not votes:
        return False
    top = votes.most_common(2)
    second = top[1][1] if len(top) > 1 else 0
    return top[0][1] > second + remaining


@attrs.frozen
class MajorityVote:
    """Sample ``samples`` answers with ``sampler`` concurrently and return the most
    frequent final answer (self-consistency).

    ``extract`` maps a completion to its answer (``None``: no answer, no vote).
    With ``early_stop`` the remaining samples are cancelled (their engine requests
    aborted) as soon as the leader cannot be overtaken.  Ties go to the answer
    seen first.  The returned task's ``output_str`` is the first
    completion that gave the winning answer; ``customized_result_fields`` holds
    ``answer``, ``votes`` and ``samples_finished``.

    Paper: Wang et al., "Self-Consistency Improves Chain of Thought Reasoning in
    Language Models" (ICLR 2023).
    """

    sampler: Any = attrs.field(factory=Sampler)
    samples: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    extract: Callable[[str | None], str | None] = extract_answer
    early_stop: bool = True

    async def run(
        self,
        ctx: RequestContext,
        task: GenerationTask,
        /,
        samples: int | None = None,
        **kwargs: Any,
    ) -> GenerationTask:
        n = sample_count(self.samples, samples)
        votes: Counter[str] = Counter()
        first_output: dict[str, GenerationTask] = {}
        finished = 0
        async with ctx.parallel() as par:
            for _ in range(n):
                par.start(self.sampler.run, ctx, fresh_task(task))
            async for handle in par.as_completed():
                out: GenerationTask = handle.result()
                finished += 1
                answer = self.extract(out.output_str)
                if answer is not None:
                    votes[answer] += 1
                    first_output.setdefault(answer, out)
                if self.early_stop and vote_is_decided(votes, n - finished):
                    par.cancel_all()
                    break
        answer = votes.most_common(1)[0][0] if votes else None
        details = {
            "answer": answer,
            "votes": dict(votes),
            "samples_finished": finished,
            "samples_requested": n,
        }
        return result_from(task, first_output.get(answer) if answer is not None else None, details)
