"""Majority vote (self-consistency) over any sampler, with early stopping."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import anyio
import attrs

from .._context import RequestContext, under_token_budget
from .._tasks import GenerationTask, ScaffoldingOutput
from ._answers import cut_answer, extract_answer
from ._sampler import (
    Sampler,
    fresh_copies,
    fresh_task,
    grouped,
    result_from,
    sample_count,
    sample_within_budget,
)
from ._voting import LeaderDecided, StopRule, VoteState, canonical

__all__ = ["MajorityVote", "vote_is_decided"]


def vote_is_decided(votes: Any, remaining: int) -> bool:
    """True once the leading answer cannot be overtaken (nor tied) by the
    ``remaining`` votes still to come (``votes``: answer -> count)."""
    return LeaderDecided()(VoteState(counts=dict(votes), weights=dict(votes), remaining=remaining))


def _stop_rule(early_stop: bool | StopRule) -> StopRule | None:
    if early_stop is True:
        return LeaderDecided()
    if early_stop is False:
        return None
    if not callable(early_stop):
        raise TypeError(f"early_stop must be a bool or a stop rule, got {early_stop!r}")
    return early_stop


@attrs.frozen
class MajorityVote:
    """Sample ``samples`` answers with ``sampler`` and return the most voted final
    answer (self-consistency).

    Parameters:
        sampler: any controller with ``run(ctx, task)`` (a :class:`Sampler`, a
            :class:`DynasorCoT`, a tree search ...).
        samples: how many samples at most.
        extract: completion -> answer (``None``: no answer, no vote).
        equivalent: ``(a, b) -> bool`` grouping different spellings of one answer
            (:func:`math_equivalent` for math); ``None`` compares strings.
        weight: completion -> vote weight (weighted voting, e.g. a confidence or
            a reward); ``None`` gives every vote 1.
        early_stop: ``True`` cancels the remaining samples once the leader cannot
            be overtaken (:class:`LeaderDecided`); a stop rule
            (:class:`AdaptiveConsistency`, :class:`WindowAgreement`, any
            ``VoteState -> bool``) stops when it says so; ``False`` never stops.
        concurrency: samples in flight at once (``None``: all).  Fewer in flight
            lets early stopping save more of the work.

    Ties go to the answer seen first.  Samples cut off by a token budget
    (:meth:`RequestContext.token_budget`) do not vote, nor do samples cut by
    ``max_tokens`` (finish reason ``"length"``) before a ``\\boxed{}`` answer:
    a number or a sentence in cut text is not an answer.  ``output_str`` is the first
    completion that gave the winning answer; ``details`` holds ``answer``,
    ``votes``, ``weights``, ``samples_finished``, ``samples_requested`` and
    ``unanswered``: why finished samples did not vote (``empty`` outputs, outputs
    ``cut_by_length`` before an answer, outputs with ``no_answer`` to extract).

    Paper: Wang et al., "Self-Consistency Improves Chain of Thought Reasoning in
    Language Models" (ICLR 2023).
    """

    sampler: Any = attrs.field(factory=Sampler)
    samples: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    extract: Callable[[str | None], str | None] = extract_answer
    early_stop: bool | StopRule = True
    equivalent: Callable[[str, str], bool] | None = None
    weight: Callable[[GenerationTask], float] | None = None
    concurrency: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1))
    )

    def __attrs_post_init__(self) -> None:
        _stop_rule(self.early_stop)

    async def run(
        self,
        ctx: RequestContext,
        task: GenerationTask,
        /,
        samples: int | None = None,
        **kwargs: Any,
    ) -> GenerationTask:
        n = sample_count(self.samples, samples)
        stop = _stop_rule(self.early_stop)
        state = VoteState(remaining=n)
        first_output: dict[str, GenerationTask] = {}
        seen: list[str] = []
        finished = 0
        unanswered = {"empty": 0, "cut_by_length": 0, "no_answer": 0}  # why samples did not vote
        # a limit only where one was asked for below the sample count (an
        # unneeded semaphore costs a checkpoint per sample)
        limit = self.concurrency
        slots = anyio.Semaphore(limit) if limit is not None and limit < n else None

        # our Sampler copies the task it is given; any other sampler gets a copy
        # of its own, so what it changes stays in its sample
        copy = (lambda t: t) if type(self.sampler) is Sampler else fresh_task

        # the samples are one prefix group: the engine computes the prompt once
        base = grouped(task, n)

        async def one() -> GenerationTask | None:
            async with slots or contextlib.nullcontext():
                return await sample_within_budget(self.sampler, ctx, copy(base))

        # our Sampler's sample is one task: it goes to the worker as a job (no
        # task of the request's own per sample), except under a token budget,
        # where a sample cut off must not vote (and not fail the vote)
        direct = (
            type(self.sampler) is Sampler
            and not self.sampler.stream
            and slots is None
            and not under_token_budget()
        )
        async with ctx.parallel() as par:
            if direct:
                # prepared and validated once; the samples are copies of it
                first = self.sampler.prepare(base)
                actor = ctx.resolve(first)
                for t in [first, *fresh_copies(first, n - 1, type(first))]:
                    par._submit(t, actor)
            else:
                for _ in range(n):
                    par.start(one)
            async for handle in par.as_completed():
                out: GenerationTask | None = handle.result()
                finished += out is not None
                answer = None
                if out is not None and (
                    out.finish_reason != "length" or cut_answer(out.output_str) is not None
                ):  # a sample cut by max_tokens votes only with an answer it boxed
                    answer = self.extract(out.output_str)
                if out is not None and answer is None:
                    if not (out.output_str or "").strip():
                        unanswered["empty"] += 1
                    elif out.finish_reason == "length":
                        unanswered["cut_by_length"] += 1
                    else:
                        unanswered["no_answer"] += 1
                if answer is not None:
                    if self.equivalent is not None and answer not in seen:
                        answer = await canonical(answer, seen, self.equivalent)
                    if answer not in seen:
                        seen.append(answer)
                    first_output.setdefault(answer, out)  # type: ignore[arg-type]
                w = self.weight(out) if (self.weight is not None and out is not None) else 1.0
                state.add(answer, w)
                # built only if somebody reads it: from a snapshot of the votes
                ctx._emit_later(
                    functools.partial(
                        _partial_output,
                        out.output_str if out is not None else "",
                        dict(state.counts),
                        finished,
                        n,
                    )
                )
                if stop is not None and stop(state):
                    par.cancel_all()
                    break
        answer = state.leader()
        details = {
            "answer": answer,
            "votes": dict(state.counts),
            "weights": dict(state.weights),
            "samples_finished": finished,
            "samples_requested": n,
            "unanswered": unanswered,
        }
        return result_from(task, first_output.get(answer) if answer is not None else None, details)


def _partial_output(
    text: str | None, votes: dict[str, int], finished: int, n: int
) -> ScaffoldingOutput:
    """The vote's partial output after a sample: its text and the votes so far."""
    return ScaffoldingOutput(
        text,
        finished=False,
        details={"votes": votes, "samples_finished": finished, "samples_requested": n},
    )
