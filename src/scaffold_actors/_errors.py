"""Exceptions raised by the scaffold runtime."""

from __future__ import annotations

from engine_bridge import EngineError, InvalidRequestError

__all__ = [
    "CancelGraceExceededWarning",
    "EngineError",
    "InvalidRequestError",
    "InvalidTaskError",
    "RequestCancelledError",
    "RuntimeClosedError",
    "ScaffoldError",
    "TaskFailedError",
    "TaskNotSupportedError",
    "TooManyRequestsError",
    "UnknownWorkerTagError",
]


class ScaffoldError(Exception):
    """Base class of the runtime's own errors."""


class InvalidTaskError(InvalidRequestError, ScaffoldError):
    """A task or request was rejected at submission; ``field`` names what to fix."""

    @classmethod
    def of(cls, owner: str, error: InvalidRequestError) -> InvalidTaskError:
        """``error`` (an engine's refusal of one field) as the refusal of
        ``owner``'s field, ``"GenerationTask.max_tokens"``; an
        :class:`InvalidTaskError` already names its owner and is returned as is."""
        if isinstance(error, InvalidTaskError):
            return error
        return cls(f"{owner}.{error.field}", error.reason)


class UnknownWorkerTagError(InvalidTaskError):
    """A task names a worker tag that no worker is registered for."""

    def __init__(self, tag: object, known: list[str]) -> None:
        super().__init__(
            "worker_tag", f"no worker is registered for {tag!r}; known tags: {sorted(known)}"
        )
        self.tag = tag


class TaskNotSupportedError(ScaffoldError):
    """The worker for the task's tag has no handler for the task's type."""


class TaskFailedError(ScaffoldError):
    """A handler reported a failure status instead of raising (compat handlers)."""

    def __init__(self, message: str, status: object = None) -> None:
        super().__init__(message)
        self.status = status


class RequestCancelledError(ScaffoldError):
    """The request was cancelled before it produced a result."""


class TooManyRequestsError(ScaffoldError):
    """The in-flight cap is reached and the caller asked not to wait."""


class RuntimeClosedError(ScaffoldError):
    """The runtime is shut down (or not started) and takes no new requests."""


class CancelGraceExceededWarning(RuntimeWarning):
    """A cancelled task's handler did not unwind within the runtime's
    ``cancel_grace``: the cancellation returned while the handler (and maybe its
    engine request) still runs.  Counted in ``stats()["cancel_grace_overruns"]``."""
