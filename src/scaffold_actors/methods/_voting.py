"""Vote state and stopping rules for self-consistency."""

from __future__ import annotations

from collections.abc import Callable
from math import comb
from typing import Protocol

import anyio
import anyio.to_thread
import attrs

__all__ = [
    "AdaptiveConsistency",
    "LeaderDecided",
    "StopRule",
    "VoteState",
    "WindowAgreement",
    "beta_majority_confidence",
]


@attrs.define
class VoteState:
    """The votes so far.  ``counts``/``weights`` map an answer (the first form seen
    of each equivalence class) to its number of votes / summed weight;
    ``history`` is every sample's answer in finishing order (``None``: no answer);
    ``remaining`` counts samples requested but not finished."""

    counts: dict[str, int] = attrs.field(factory=dict)
    weights: dict[str, float] = attrs.field(factory=dict)
    history: list[str | None] = attrs.field(factory=list)
    remaining: int = 0

    def add(self, answer: str | None, weight: float) -> None:
        self.history.append(answer)
        self.remaining -= 1
        if answer is not None:
            self.counts[answer] = self.counts.get(answer, 0) + 1
            self.weights[answer] = self.weights.get(answer, 0.0) + weight

    def leader(self) -> str | None:
        """The answer with the largest weight (ties: the one seen first)."""
        if not self.weights:
            return None
        return max(self.weights, key=lambda a: self.weights[a])  # first maximum wins

    def top_two_counts(self) -> tuple[int, int]:
        ranked = [*sorted(self.counts.values(), reverse=True), 0, 0]
        return ranked[0], ranked[1]


class StopRule(Protocol):
    """Decides, after each finished sample, whether to cancel the remaining ones."""

    def __call__(self, state: VoteState) -> bool: ...


@attrs.frozen
class LeaderDecided:
    """Stop once the leader cannot be overtaken nor tied by the remaining samples
    (exact: the answer cannot change).  With weighted voting, every remaining
    sample is assumed to carry at most ``max_weight``."""

    max_weight: float = 1.0

    def __call__(self, state: VoteState) -> bool:
        if not state.weights:
            return False
        ranked = [*sorted(state.weights.values(), reverse=True), 0.0]
        return ranked[0] > ranked[1] + state.remaining * self.max_weight


def beta_majority_confidence(leader: int, runner_up: int) -> float:
    """P(p > 1/2) for p ~ Beta(leader + 1, runner_up + 1): the probability that
    the leading answer is the majority between the top two (Adaptive-Consistency's
    Beta criterion).  Exact for integer counts: I_{1/2}(a, b) = P(Bin(a+b-1, 1/2) >= a)."""
    a, b = leader + 1, runner_up + 1
    n = a + b - 1
    below = sum(comb(n, k) for k in range(a))  # P(Bin(n, 1/2) <= a - 1) * 2^n
    return below / (1 << n)


@attrs.frozen
class AdaptiveConsistency:
    """Stop when the vote is confident enough: the Beta posterior probability that
    the leader beats the runner-up reaches ``threshold`` (after ``min_samples``).

    Paper: Aggarwal et al., "Let's Sample Step by Step: Adaptive-Consistency for
    Efficient Reasoning and Coding with LLMs" (EMNLP 2023).
    """

    threshold: float = attrs.field(
        default=0.95, validator=[attrs.validators.gt(0.5), attrs.validators.lt(1.0)]
    )
    min_samples: int = attrs.field(default=3, validator=attrs.validators.ge(1))

    def __call__(self, state: VoteState) -> bool:
        if len(state.history) < self.min_samples or not state.counts:
            return False
        first, second = state.top_two_counts()
        return beta_majority_confidence(first, second) >= self.threshold


@attrs.frozen
class WindowAgreement:
    """Stop when the last ``window`` finished samples all gave the same answer.

    Paper: Li et al., "Escape Sky-high Cost: Early-stopping Self-Consistency for
    Multi-step Reasoning" (ICLR 2024), with windows taken in finishing order.
    """

    window: int = attrs.field(default=4, validator=attrs.validators.ge(2))

    def __call__(self, state: VoteState) -> bool:
        last = state.history[-self.window :]
        return len(last) == self.window and last[0] is not None and len(set(last)) == 1


async def canonical(
    answer: str, seen: list[str], equivalent: Callable[[str, str], bool] | None
) -> str:
    """The first-seen answer ``answer`` is equivalent to (or ``answer`` itself).

    ``equivalent`` runs in a worker thread, never on the event loop: it parses
    model output (see :func:`math_equivalent`, which is also bounded in time).
    Cancellation abandons a comparison still running in its thread."""
    if answer in seen or equivalent is None:
        return answer
    earlier = list(seen)

    def first_equivalent() -> str:  # one trip to the thread for all the comparisons
        return next((other for other in earlier if equivalent(answer, other)), answer)

    return await anyio.to_thread.run_sync(first_equivalent, abandon_on_cancel=True)
