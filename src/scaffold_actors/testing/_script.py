"""Scripted answers for the simulated engine."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import attrs

from engine_bridge import SimulatedCall, SimulatedOutput

__all__ = ["Answer", "Script", "fail", "reply", "stall"]

#: what a rule answers: text, a :class:`SimulatedOutput`, or a function of the call
Answer = str | SimulatedOutput | Callable[[SimulatedCall], "str | SimulatedOutput"]


def reply(text: str, logprobs: Sequence[float] | None = None) -> SimulatedOutput:
    """An answer, with its tokens' log probabilities if given (one per word-token)."""
    return SimulatedOutput(text, logprobs)


def stall(seconds: float, text: str = "") -> SimulatedOutput:
    """An answer that starts only ``seconds`` after the engine admitted it (on the
    loop's clock: instant under a mock clock).  Other requests go on meanwhile."""
    return SimulatedOutput(text, delay=seconds)


def fail(error: BaseException, *, after_tokens: int = 0, text: str = "") -> SimulatedOutput:
    """An answer that fails with ``error`` once ``after_tokens`` tokens of ``text``
    were streamed (the engine dying mid-answer)."""
    return SimulatedOutput(text, error=error, error_after=after_tokens)


class Script:
    """The answers of a :class:`~engine_bridge.SimulatedEngine`, decided by the
    prompt or by the order of calls (pass it as the engine's responder).

    ``script.on(match, answer)`` answers prompts that ``match`` (a substring, or a
    compiled regex searched in the prompt) with ``answer``; the first matching
    rule wins.  ``script.then(a, b, ...)`` answers the next calls in order, before
    any rule.  Otherwise ``default``.  An answer is text, a
    :class:`SimulatedOutput` (see :func:`reply`, :func:`stall`, :func:`fail`) or a
    function of the :class:`SimulatedCall`.

    ``script.finish_order([2, 0, 1])`` makes calls 2, 0 and 1 finish in that
    order (each waits a second of the loop's clock more than the one before it:
    use a mock clock).  ``calls`` holds every call, for asserting what the
    controller asked.

    A prompt no rule matches, with no ``default``, raises :class:`LookupError`
    naming it (an unexpected question is a failed test, not a silent answer).
    """

    def __init__(self, default: Answer | None = None) -> None:
        self.default = default
        self.calls: list[SimulatedCall] = []
        self._rules: list[tuple[str | re.Pattern[str], Answer]] = []
        self._queue: list[Answer] = []
        self._order: dict[int, int] = {}

    def on(self, match: str | re.Pattern[str], answer: Answer) -> Script:
        """Answer prompts matching ``match`` with ``answer``; returns the script."""
        if not isinstance(match, (str, re.Pattern)) or match == "":
            raise TypeError(f"match must be a non-empty string or a compiled regex, got {match!r}")
        self._rules.append((match, answer))
        return self

    def then(self, *answers: Answer) -> Script:
        """Answer the next calls with ``answers``, in order; returns the script."""
        self._queue.extend(answers)
        return self

    def finish_order(self, order: Sequence[int]) -> Script:
        """Calls ``order[0]``, ``order[1]``, ... (by call index) finish in that order."""
        if sorted(order) != list(range(len(order))):
            raise ValueError(f"order must be a permutation of 0..{len(order) - 1}, got {order!r}")
        self._order = {call: rank for rank, call in enumerate(order)}
        return self

    @property
    def prompts(self) -> list[str]:
        """The prompts the engine was asked, in order."""
        return [c.prompt for c in self.calls]

    def __call__(self, call: SimulatedCall) -> str | SimulatedOutput:
        self.calls.append(call)
        answer = self._queue.pop(0) if self._queue else self._match(call.prompt)
        out = answer(call) if callable(answer) else answer
        rank = self._order.get(call.index)
        if rank is not None:
            out = out if isinstance(out, SimulatedOutput) else SimulatedOutput(out)
            out = attrs.evolve(out, delay=out.delay + float(rank))
        return out

    def _match(self, prompt: str) -> Answer:
        for match, answer in self._rules:
            if isinstance(match, str) and match in prompt:
                return answer
            if isinstance(match, re.Pattern) and match.search(prompt):
                return answer
        if self.default is None:
            raise LookupError(f"the script has no answer for the prompt {prompt[-200:]!r}")
        return self.default

    def __repr__(self) -> str:
        return (
            f"Script({len(self._rules)} rules, {len(self._queue)} queued, {len(self.calls)} calls)"
        )
