"""Tasks of the A2A project: list the remote agents, send one a message."""

from __future__ import annotations

import dataclasses
from typing import Any

from ...._tasks import Task

__all__ = ["A2AListTask", "A2ASendTask"]


@dataclasses.dataclass(eq=False)
class A2ASendTask(Task):
    """Send ``message`` to the remote agent named ``agent_name``; the worker
    puts the agent's reply in ``output_str``."""

    worker_tag: Any = None
    agent_name: str | None = None
    message: str | None = None
    output_str: str | None = None

    @staticmethod
    def create_a2a_task(agent_name: str, message: str, worker_tag: Any = None) -> A2ASendTask:
        return A2ASendTask(worker_tag=worker_tag, agent_name=agent_name, message=message)


@dataclasses.dataclass(eq=False)
class A2AListTask(Task):
    """Discover the agents the worker reaches: ``result_agents``, one
    :class:`AgentInfo` each."""

    worker_tag: Any = None
    result_agents: list[Any] | None = None

    @staticmethod
    def create_a2a_task(worker_tag: Any = None) -> A2AListTask:
        return A2AListTask(worker_tag=worker_tag)
