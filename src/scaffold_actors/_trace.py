"""Per-request accounting: token usage, task timing, and replayable traces."""

from __future__ import annotations

import json
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from os import PathLike
from typing import Any, ClassVar

import attrs

from ._tasks import (
    GenerationTask,
    RewardTask,
    StreamGenerationTask,
    Task,
    ToolCallTask,
    normalize_tag,
)
from ._worker import Handler, Worker

__all__ = ["ExecutionTrace", "ReplayMismatchError", "ReplayWorker", "TaskRecord", "TokenUsage"]

TASK_TYPES: dict[str, type[Task]] = {
    cls.__name__: cls for cls in (GenerationTask, StreamGenerationTask, RewardTask, ToolCallTask)
}


@attrs.define(slots=True)
class TokenUsage:
    """Tokens and tasks a request used so far (updated as each task ends,
    including tasks that were cancelled part-way)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    tasks: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@attrs.frozen(slots=True)
class TaskRecord:
    """One task a request ran: what went in, what came out, when, and how it ended.

    ``status`` is ``"ok"``, ``"error"`` or ``"cancelled"``; ``start``/``end`` are
    event-loop clock readings (virtual under a mock clock).
    """

    task_type: str
    worker_tag: Any
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    start: float
    end: float
    status: str
    error: str | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define(slots=True)
class ExecutionTrace:
    """Every task one request ran, in the order they finished."""

    records: list[TaskRecord] = attrs.field(factory=list)

    FORMAT: ClassVar[str] = "scaffold-actors-trace/1"

    def to_json(self) -> str:
        return json.dumps({"format": self.FORMAT, "records": [r.to_dict() for r in self.records]})

    @classmethod
    def from_json(cls, text: str) -> ExecutionTrace:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
            raise ValueError(f"not a {cls.FORMAT} document")
        return cls([TaskRecord(**r) for r in data["records"]])

    def save(self, path: str | PathLike[str]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: str | PathLike[str]) -> ExecutionTrace:
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())

    @classmethod
    def merge(cls, traces: Iterable[ExecutionTrace]) -> ExecutionTrace:
        return cls([r for t in traces for r in t.records])


class ReplayMismatchError(LookupError):
    """A replayed controller asked for a task the trace does not contain."""


def _key(task_type: str, tag: Any, inputs: Mapping[str, Any]) -> str:
    return json.dumps([task_type, normalize_tag(tag), inputs], sort_keys=True, default=repr)


class ReplayWorker(Worker):
    """Answers tasks with the outputs recorded in an :class:`ExecutionTrace`.

    Tasks are matched by type, worker tag and inputs; identical tasks (samples of
    one prompt) get the recorded outputs in recording order.  Register the same
    replay worker under every tag the controller uses, e.g.
    ``{tag: replay for tag in replay.tags}``.  A task with no recorded answer
    raises :class:`ReplayMismatchError` naming it.
    """

    def __init__(self, trace: ExecutionTrace) -> None:
        self._answers: dict[str, deque[Mapping[str, Any]]] = defaultdict(deque)
        tags = []
        for r in trace.records:
            if r.status != "ok":
                continue
            self._answers[_key(r.task_type, r.worker_tag, r.inputs)].append(r.outputs)
            if r.worker_tag not in tags:
                tags.append(r.worker_tag)
        self.tags: tuple[Any, ...] = tuple(tags)

    def check_task(self, task: Task) -> None:
        return None

    async def replay_handler(self, task: Task) -> None:
        key = _key(type(task).__name__, task.worker_tag, task.inputs())
        queue = self._answers.get(key)
        if not queue:
            raise ReplayMismatchError(
                f"no recorded output for {type(task).__name__} with tag "
                f"{normalize_tag(task.worker_tag)!r} and inputs {task.inputs()!r}"
            )
        task.set_outputs(queue.popleft())
        if isinstance(task, StreamGenerationTask):
            task.end_flag = True

    task_handlers: ClassVar[dict[type[Task], Handler]] = {Task: replay_handler}
