"""DeepConf: confidence-filtered voting and early termination of weak traces."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs

from .._context import RequestContext
from .._tasks import GenerationTask
from ._answers import extract_answer
from ._sampler import (
    Sampler,
    fresh_task,
    grouped,
    result_from,
    sample_count,
    sample_within_budget,
)
from ._voting import canonical

__all__ = ["DeepConf", "group_confidences", "trace_confidence"]

Measure = Literal["mean", "lowest_group", "bottom10", "tail"]


def group_confidences(token_confidences: Sequence[float], window: int) -> list[float]:
    """Mean token confidence over each sliding window of ``window`` tokens (one
    value per window position; a trace shorter than the window gives its mean)."""
    n = len(token_confidences)
    if n == 0:
        return []
    if n <= window:
        return [math.fsum(token_confidences) / n]
    out = []
    s = math.fsum(token_confidences[:window])
    out.append(s / window)
    for i in range(window, n):
        s += token_confidences[i] - token_confidences[i - window]
        out.append(s / window)
    return out


def trace_confidence(
    token_confidences: Sequence[float], measure: Measure, window: int, tail: int
) -> float:
    """One trace's confidence: ``mean`` over all tokens, ``lowest_group`` (the
    weakest window), ``bottom10`` (mean of the weakest 10% of windows) or
    ``tail`` (mean of the last ``tail`` tokens)."""
    if not token_confidences:
        return -math.inf
    if measure == "mean":
        return math.fsum(token_confidences) / len(token_confidences)
    if measure == "tail":
        last = token_confidences[-tail:]
        return math.fsum(last) / len(last)
    groups = group_confidences(token_confidences, window)
    if measure == "lowest_group":
        return min(groups)
    k = max(1, len(groups) // 10)
    return math.fsum(sorted(groups)[:k]) / k


def _percentile(values: Sequence[float], q: float) -> float:
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@attrs.frozen
class DeepConf:
    """Parallel reasoning traces filtered and weighted by their own confidence.

    Token confidence, with ``top_k=k > 0``, is the paper's: minus the mean
    log-probability of the token's ``k`` most likely alternatives (a peaked
    distribution gives a high confidence), read from the engine's top-k
    logprobs (OpenAI-compatible servers' ``top_logprobs``, the simulated
    engine).  An engine that gives only the sampled token's logprob refuses
    ``top_k > 0`` at submission (the transformers engine), or the request fails
    with :class:`ValueError` when a server returned no alternatives.  With
    ``top_k=0`` (the default, every engine) token confidence is the sampled
    token's log-probability, a proxy.  A trace's confidence is a ``measure``
    over sliding windows of ``window`` tokens (see :func:`trace_confidence`).

    ``mode="offline"``: generate ``samples`` traces, keep the ``keep_top``
    fraction with the highest confidence, and vote weighted by confidence
    (weights shifted to be positive).

    ``mode="online"``: generate ``warmup`` traces in full; the stopping threshold
    is the confidence that keeps the ``keep_top`` fraction of them
    (``keep_top=0.1``: DeepConf-low, ``0.9``: DeepConf-high).  The remaining
    traces stream, and a trace whose latest window falls below the threshold is
    cancelled in the engine and does not vote.  Sampling stops once the leading
    answer holds ``consensus`` of the vote weight.

    ``details``: ``answer``, ``votes`` (weights), ``threshold``, ``kept``,
    ``terminated`` (traces cut short), ``samples_finished``.

    Paper: Fu et al., "Deep Think with Confidence" (2025).
    """

    sampler: Sampler = attrs.field(factory=lambda: Sampler(max_tokens=1024))
    samples: int = attrs.field(default=16, validator=attrs.validators.ge(1))
    mode: Literal["offline", "online"] = attrs.field(
        default="offline", validator=attrs.validators.in_(("offline", "online"))
    )
    measure: Measure = attrs.field(
        default="lowest_group",
        validator=attrs.validators.in_(("mean", "lowest_group", "bottom10", "tail")),
    )
    window: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    tail: int = attrs.field(default=256, validator=attrs.validators.ge(1))
    keep_top: float = attrs.field(
        default=0.9, validator=[attrs.validators.gt(0.0), attrs.validators.le(1.0)]
    )
    warmup: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    consensus: float = attrs.field(
        default=0.95, validator=[attrs.validators.gt(0.5), attrs.validators.le(1.0)]
    )
    check_every: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    top_k: int = attrs.field(default=0, validator=[attrs.validators.ge(0), attrs.validators.le(20)])
    extract: Callable[[str | None], str | None] = extract_answer
    equivalent: Callable[[str, str], bool] | None = None

    def _sampler(self, stream: bool) -> Sampler:
        return attrs.evolve(
            self.sampler,
            num_logprobs=self.top_k,
            stream=stream,
            streaming_step=self.check_every if stream else self.sampler.streaming_step,
        )

    def token_confidences(self, out: GenerationTask, start: int = 0) -> list[float]:
        """Per generated token from ``start`` on: minus the mean of its top-k
        logprobs (``top_k > 0``), else its sampled logprob.  Raises
        :class:`ValueError` when ``top_k > 0`` and the engine reported no
        alternatives."""
        if not self.top_k:
            return list((out.logprobs or [])[start:])
        n = len(out.logprobs or ())
        top = out.top_logprobs or []
        if len(top) < n or any(not alts for alts in top[start:n]):
            raise ValueError(
                f"DeepConf(top_k={self.top_k}) needs the engine's top-k logprobs; it reported "
                f"them for {sum(1 for a in top if a)} of {n} tokens (use top_k=0: the sampled "
                "token's logprob)"
            )
        return [-math.fsum(lp for _, lp in alts) / len(alts) for alts in top[start:n]]

    def _confidence(self, out: GenerationTask) -> float:
        return trace_confidence(self.token_confidences(out), self.measure, self.window, self.tail)

    async def run(
        self,
        ctx: RequestContext,
        task: GenerationTask,
        /,
        samples: int | None = None,
        **kwargs: Any,
    ) -> GenerationTask:
        n = sample_count(self.samples, samples)
        if self.mode == "offline":
            return await self._offline(ctx, task, n)
        return await self._online(ctx, task, n)

    async def _generate(
        self, ctx: RequestContext, task: GenerationTask, k: int
    ) -> list[GenerationTask]:
        sampler = self._sampler(stream=False)
        outs: list[GenerationTask] = []

        async def one() -> None:
            out = await sample_within_budget(sampler, ctx, fresh_task(task))
            if out is not None:
                outs.append(out)

        async with ctx.parallel() as par:
            for _ in range(k):
                par.start(one)
        return outs

    async def _vote(
        self,
        task: GenerationTask,
        scored: list[tuple[float, GenerationTask]],
        details: dict[str, Any],
    ) -> GenerationTask:
        if not scored:
            return result_from(task, None, {"answer": None, "votes": {}, **details})
        floor = min(c for c, _ in scored)
        weights: dict[str, float] = {}
        first: dict[str, GenerationTask] = {}
        seen: list[str] = []
        for conf, out in scored:
            answer = self.extract(out.output_str)
            if answer is None:
                continue
            answer = await canonical(answer, seen, self.equivalent)
            if answer not in seen:
                seen.append(answer)
            # confidences are log-probabilities (<= 0): shift so the weakest kept trace
            # still counts a little and stronger ones more
            weights[answer] = weights.get(answer, 0.0) + (conf - floor + 1.0)
            first.setdefault(answer, out)
        answer = max(weights, key=lambda a: weights[a]) if weights else None
        return result_from(
            task,
            first.get(answer) if answer is not None else None,
            {"answer": answer, "votes": weights, **details},
        )

    async def _offline(self, ctx: RequestContext, task: GenerationTask, n: int) -> GenerationTask:
        outs = await self._generate(ctx, grouped(task, n), n)  # one prefix group
        scored = sorted(((self._confidence(o), o) for o in outs), key=lambda p: -p[0])
        keep = max(1, math.ceil(len(scored) * self.keep_top)) if scored else 0
        kept = scored[:keep]
        threshold = kept[-1][0] if kept else None
        return await self._vote(
            task,
            kept,
            {
                "threshold": threshold,
                "kept": len(kept),
                "terminated": 0,
                "samples_finished": len(outs),
            },
        )

    async def _online(self, ctx: RequestContext, task: GenerationTask, n: int) -> GenerationTask:
        base = grouped(task, n)  # the warm-up and the later traces: one prefix group
        warm = await self._generate(ctx, base, min(self.warmup, n))
        confs = [self._confidence(o) for o in warm]
        threshold = _percentile(confs, 100.0 * (1.0 - self.keep_top)) if confs else -math.inf
        scored = [(c, o) for c, o in zip(confs, warm, strict=True) if c >= threshold]
        terminated = 0
        finished = len(warm)
        sampler = self._sampler(stream=True)

        def leader_share() -> float:
            totals: dict[str, float] = {}
            for c, o in scored:
                a = self.extract(o.output_str)
                if a is not None:
                    totals[a] = totals.get(a, 0.0) + (c - threshold + 1.0)
            total = math.fsum(totals.values())
            return max(totals.values()) / total if total > 0 else 0.0

        async def trace() -> GenerationTask | None:
            """One streamed trace; None when cut for low confidence."""
            nonlocal terminated
            t = sampler.prepare(fresh_task(base))
            t.streaming_step = self.check_every  # type: ignore[attr-defined]
            async with ctx.stream(t) as updates:  # type: ignore[arg-type]
                async for partial in updates:
                    n = len(partial.logprobs or ())
                    if n >= self.window and not partial.end_flag:
                        # the latest window only: earlier tokens were checked before
                        last = self.token_confidences(partial, n - self.window)
                        recent = math.fsum(last) / self.window
                        if recent < threshold:
                            terminated += 1
                            return None  # leaving the stream aborts the engine request
            return t

        async with ctx.parallel() as par:
            for _ in range(n - len(warm)):
                par.start(sample_within_budget, _Traced(trace), ctx, task)
            if scored and leader_share() >= self.consensus:
                par.cancel_all()
            async for handle in par.as_completed():
                out = handle.result()
                if out is None:
                    continue
                finished += 1
                conf = self._confidence(out)
                if conf >= threshold:
                    scored.append((conf, out))
                if leader_share() >= self.consensus:
                    par.cancel_all()
                    break
        return await self._vote(
            task,
            scored,
            {
                "threshold": threshold,
                "kept": len(scored),
                "terminated": terminated,
                "samples_finished": finished,
            },
        )


@attrs.frozen
class _Traced:
    """Adapts a zero-argument trace coroutine to the ``sampler.run(ctx, task)`` shape."""

    fn: Callable[[], Any]

    async def run(self, ctx: RequestContext, task: GenerationTask, /) -> Any:
        return await self.fn()
