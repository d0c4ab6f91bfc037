"""Execution scopes: where in a request's tree of parallel branches code runs."""

from __future__ import annotations

import contextvars
from collections.abc import Sequence

import attrs

__all__ = ["ExecutionScope", "current_scope"]


def _path(value: Sequence[int]) -> tuple[int, ...]:
    path = tuple(value)
    for i in path:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"branch_path must hold non-negative integers, got {value!r}")
    return path


@attrs.frozen(slots=True)
class ExecutionScope:
    """A point in a request's execution tree (TensorRT-LLM compatible).

    Every request has a root scope (``branch_path == ()``, ``scope_id`` the
    request's id, ``"req-3"``); every parallel branch a child of the scope it
    forked from: ``"req-3:0"``, ``"req-3:0.2"``.  A ``scope_id`` is unique while
    the runtime lives, so workers key per-branch resources (an MCP session, a
    sandbox) by it and release them in :meth:`Worker.on_scope_end`.

    Branches are made by ``ctx.parallel()`` children (child ``i`` for the
    ``i``-th started) and by a generator controller's ``ParallelProcess``
    (child ``i`` for the ``i``-th sub-controller).  Tasks run with
    ``ctx.run_all`` or yielded together share their parent's scope.
    """

    request_id: str
    branch_path: tuple[int, ...] = attrs.field(default=(), converter=_path)

    @property
    def scope_id(self) -> str:
        if not self.branch_path:
            return self.request_id
        return f"{self.request_id}:{'.'.join(map(str, self.branch_path))}"

    def child(self, branch_index: int) -> ExecutionScope:
        """The scope of this scope's ``branch_index``-th parallel branch."""
        if isinstance(branch_index, bool) or not isinstance(branch_index, int) or branch_index < 0:
            _path((branch_index,))  # raises, naming the value
        # one per parallel child: built without attrs' __init__ (the path is
        # checked above; the rest of it was checked when this scope was made)
        new = _new(ExecutionScope)
        _set(new, "request_id", self.request_id)
        _set(new, "branch_path", (*self.branch_path, branch_index))
        return new

    def with_branch_path(self, branch_path: Sequence[int]) -> ExecutionScope:
        """A scope of the same request at ``branch_path`` (for logical trees)."""
        return ExecutionScope(self.request_id, tuple(branch_path))

    @property
    def branch_path_list(self) -> list[int]:
        return list(self.branch_path)

    def __str__(self) -> str:
        return self.scope_id


_new = object.__new__
_set = object.__setattr__  # what attrs' __init__ does for a frozen slots class

#: The execution scope of the code running now (``None`` outside a request).
#: Set by the runtime at request entry and at each parallel fork; a task's
#: handler sees the scope of the code that submitted the task.
current_scope: contextvars.ContextVar[ExecutionScope | None] = contextvars.ContextVar(
    "current_scope", default=None
)
