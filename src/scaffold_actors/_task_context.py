"""The run context of one task: everything a handler and the runtime exchange."""

from __future__ import annotations

import contextvars
from collections.abc import Callable

from ._scope import ExecutionScope
from ._tasks import Task

__all__ = ["TaskContext", "task_context"]

_CURRENT: contextvars.ContextVar[TaskContext] = contextvars.ContextVar("scaffold_task_context")


class TaskContext:
    """What the runtime tells a handler about the task it runs, and what the
    handler tells back.  A handler gets it with :func:`task_context`.

    ``task``
        the task being run (the handler's own argument).
    ``request_id``
        the request the task belongs to; ``None`` when the task runs outside a
        request (:meth:`Worker.run_task`).
    ``scope``
        the :class:`ExecutionScope` of the code that submitted the task (its
        request, or the parallel branch inside it); ``None`` outside a request.
        :data:`current_scope` holds the same value while the handler runs.
    ``counts_tokens``
        ``True`` while a token budget watches this generation
        (:meth:`RequestContext.token_budget`).  The handler should then report
        each step's new completion tokens with :meth:`report_tokens` *as they are
        generated* (stream the engine request), so the budget can stop the
        generation mid-way.  Tokens a handler never reported are charged from
        ``task.completion_tokens_num`` when it returns.
    ``streamed``
        ``True`` when somebody consumes the task's progress
        (:meth:`RequestContext.stream`, or a generator controller stepping a
        :class:`StreamGenerationTask`).  The handler then calls
        :meth:`notify_progress` after each update of the task's outputs.
    ``cancel_requested``
        ``True`` once the requester cancelled the task.  The handler's cancel
        scope is cancelled at the same moment, so its next checkpoint raises the
        cancellation; this flag tells shielded clean-up code why it runs.

    Blocking and cancellation: nothing here blocks or checkpoints.
    :meth:`report_tokens` may exhaust a budget, which cancels the task (the
    cancellation is raised at the handler's next checkpoint, and the requester
    gets :class:`TokenBudgetExhaustedError`).
    """

    __slots__ = ("_on_progress", "_on_tokens", "cancel_requested", "request_id", "scope", "task")

    def __init__(
        self,
        task: Task,
        request_id: int | None = None,
        on_tokens: Callable[[int], None] | None = None,
        on_progress: Callable[[], None] | None = None,
        scope: ExecutionScope | None = None,
    ) -> None:
        self.task = task
        self.request_id = request_id
        self.scope = scope
        self._on_tokens = on_tokens
        self._on_progress = on_progress
        self.cancel_requested = False

    @property
    def counts_tokens(self) -> bool:
        return self._on_tokens is not None

    @property
    def streamed(self) -> bool:
        return self._on_progress is not None

    def report_tokens(self, n: int) -> None:
        """Charge ``n`` newly generated completion tokens to the budgets watching
        the task (a no-op when none does).  Never blocks."""
        if self._on_tokens is not None:
            self._on_tokens(n)

    def notify_progress(self) -> None:
        """Tell whoever consumes the task as a stream that its outputs changed
        (a no-op when nobody does).  Never blocks."""
        if self._on_progress is not None:
            self._on_progress()

    def __repr__(self) -> str:
        return (
            f"TaskContext({type(self.task).__name__}, request_id={self.request_id}, "
            f"scope={self.scope}, "
            f"counts_tokens={self.counts_tokens}, streamed={self.streamed}, "
            f"cancel_requested={self.cancel_requested})"
        )


def task_context() -> TaskContext:
    """The :class:`TaskContext` of the task whose handler is running.

    Valid inside a handler run by the runtime or by :meth:`Worker.run_task`
    (each task, nested ones included, sees its own).  Raises
    :class:`RuntimeError` anywhere else.
    """
    try:
        return _CURRENT.get()
    except LookupError:
        raise RuntimeError(
            "task_context() is only available inside a task handler run by the "
            "runtime or by Worker.run_task"
        ) from None
