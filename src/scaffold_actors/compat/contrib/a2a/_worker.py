"""The A2A worker: remote agents behind connection objects."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

from ...._tasks import Task, TaskStatus
from ...._worker import Handler, Worker
from ._tasks import A2AListTask, A2ASendTask

__all__ = ["A2AWorker", "AgentInfo"]


@dataclasses.dataclass
class AgentInfo:
    """What a remote agent's card says of it."""

    name: str
    description: str = ""
    skills: list[str] = dataclasses.field(default_factory=list)


class A2AWorker(Worker):
    """Delegates :class:`A2ASendTask` to remote agents and answers
    :class:`A2AListTask` with their cards.

    ``connections``: one object per agent with ``get_agent_info()`` (an
    :class:`AgentInfo`), an async ``send_message(text)`` returning the reply, and
    optionally an async ``cleanup()``.  A message for an agent nobody has is
    answered ``WORKER_NOT_SUPPORTED`` with ``output_str`` naming it (through a
    runtime, that fails the task with :class:`TaskNotSupportedError`: it is not
    lost).  An exception of ``send_message`` is raised as itself.
    """

    def __init__(self, connections: Sequence[Any]) -> None:
        self.connections = list(connections)

    @classmethod
    async def init_with_urls(cls, urls: Sequence[str]) -> A2AWorker:
        """Connect to agents by URL.  Needs the ``a2a-sdk`` client, which this
        project does not ship: raises :class:`ImportError` saying so."""
        raise ImportError(
            "A2AWorker.init_with_urls needs an A2A client (a2a-sdk); pass connection "
            "objects with get_agent_info() and send_message() to A2AWorker instead"
        )

    async def list_handler(self, task: A2AListTask) -> TaskStatus:
        task.result_agents = [c.get_agent_info() for c in self.connections]
        return TaskStatus.SUCCESS

    async def send_handler(self, task: A2ASendTask) -> TaskStatus:
        for connection in self.connections:
            if connection.get_agent_info().name == task.agent_name:
                task.output_str = await connection.send_message(task.message)
                return TaskStatus.SUCCESS
        task.output_str = f"No remote A2A agent named '{task.agent_name}' is available."
        return TaskStatus.WORKER_NOT_SUPPORTED

    async def async_shutdown(self) -> None:
        """Close every connection that has a ``cleanup()`` (each one, even when
        an earlier one fails: the first error is raised after)."""
        error: BaseException | None = None
        for connection in self.connections:
            cleanup = getattr(connection, "cleanup", None)
            if cleanup is None:
                continue
            try:
                await cleanup()
            except Exception as e:  # the others still get closed
                error = error or e
        if error is not None:
            raise error

    task_handlers: ClassVar[dict[type[Task], Handler]] = {
        A2AListTask: list_handler,
        A2ASendTask: send_handler,
    }
