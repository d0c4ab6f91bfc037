"""A request-wide budget of generated tokens that cancels work when spent."""

from __future__ import annotations

import anyio

from ._errors import ScaffoldError

__all__ = ["TokenBudget", "TokenBudgetExhaustedError"]


class TokenBudgetExhaustedError(ScaffoldError):
    """A generation task could not start, or was cancelled part-way, because the
    request's token budget was spent.  Methods treat such samples as unfinished."""


class TokenBudget:
    """At most ``limit`` completion tokens for the tasks run under it.

    Enter it with ``ctx.token_budget(limit)``.  Each generation task submitted
    under it is clipped to the tokens that remain and streams its tokens into the
    budget as they are generated; the moment the budget is spent, every
    generation task still running under it is cancelled (its engine request
    aborted) and raises :class:`TokenBudgetExhaustedError`, as does any task
    submitted afterwards.  ``spent`` can exceed ``limit`` by at most the tokens
    of one engine step per running task.
    """

    __slots__ = ("_live", "limit", "spent")

    def __init__(self, limit: int) -> None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"token budget must be an int >= 1, got {limit!r}")
        self.limit = limit
        self.spent = 0
        self._live: set[anyio.CancelScope] = set()

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.spent)

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.limit

    def charge(self, tokens: int) -> None:
        """Count ``tokens`` generated; cancels every running task once spent."""
        self.spent += tokens
        if self.exhausted:
            for scope in self._live:
                scope.cancel()

    def __repr__(self) -> str:
        return f"TokenBudget(limit={self.limit}, spent={self.spent})"
