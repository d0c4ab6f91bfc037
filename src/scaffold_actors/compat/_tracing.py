"""TensorRT-LLM's event traces: what a controller's conversations and tool
calls did, in order, with the branch path of each event."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from .._chat import AssistantMessage, ChatTask, RoleMessage
from .._hints import DropKVCacheTask, TokenizeTask
from .._mcp import MCPCallTask
from .._scope import current_scope
from .._tasks import GenerationTask, Task
from ._task_collection import TaskCollection, TokenizeWorkerTag, with_task_collection

__all__ = [
    "ExecutionTrace",
    "ExecutionTracer",
    "TraceEvent",
    "tokenize_trace_scope",
    "with_execution_tracing",
]

C = TypeVar("C", bound=type)


@attrs.define
class TraceEvent:
    """One event of an execution trace (TensorRT-LLM compatible).

    ``event_type``: ``"message"`` (one message of a conversation:
    ``conversation_id``, ``role``; an assistant's carries ``tool_calls``, token
    counts and ``finish_reason``), ``"tool_call"`` (one MCP call: ``tool_call_id``,
    ``tool_name``, ``duration_ms``), ``"parallel_start"`` / ``"parallel_end"``
    (a fork: ``num_branches``; the events of branch ``i`` follow on
    ``branch_path + [i]``), ``"drop_kv_cache"`` (the conversations of this
    branch were released from the KV cache).  ``branch_path`` is the execution
    scope's.  A message carries its ``message_index`` in its conversation and, for
    a system message made with :func:`system_prompt`, its template's
    ``system_prompt_id`` (so a replay shares that prefix across conversations).
    """

    event_type: str = ""
    branch_path: list[int] = attrs.field(factory=list)
    conversation_id: int | None = None
    role: str | None = None
    tool_calls: list[str] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    finish_reason: str | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None
    duration_ms: float | None = None
    num_branches: int | None = None
    children: list[TraceEvent] | None = None
    tokenize_count: int | None = None
    # full traces: the message's text, and its token count (tokenize_trace_scope)
    content: str | None = None
    tokens: int | None = None
    tokens_source: str | None = None
    tokenize_error: str | None = None
    message_index: int | None = None
    system_prompt_id: str | None = None

    def to_dict(self, full: bool = True) -> dict[str, Any]:
        """The event without its unset fields; without ``full``, without the
        message text either (the compact form)."""
        out: dict[str, Any] = {}
        for a in attrs.fields(TraceEvent):
            value = getattr(self, a.name)
            if value is None or (a.name == "content" and not full):
                continue
            if a.name == "children":
                value = [c.to_dict(full) for c in value]
            out[a.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TraceEvent:
        known = {a.name for a in attrs.fields(TraceEvent)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("children") is not None:
            values["children"] = [cls.from_dict(c) for c in values["children"]]
        return cls(**values)


@attrs.define
class ExecutionTrace:
    """A request's events, saved to and loaded from JSON (TensorRT-LLM's event
    trace; :class:`scaffold_actors.ExecutionTrace` is the native task trace)."""

    trace_id: str = attrs.field(factory=lambda: str(uuid.uuid4()))
    events: list[TraceEvent] = attrs.field(factory=list)

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        return {"trace_id": self.trace_id, "events": [e.to_dict(full) for e in self.events]}

    def save(self, path: str | os.PathLike[str], full: bool = False) -> None:
        """Write the trace as JSON; ``full`` keeps the messages' text."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(full), f, indent=2, ensure_ascii=False, default=str)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ExecutionTrace:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or not isinstance(data.get("events", []), list):
            raise ValueError(f"{path}: not an execution trace")
        return cls(
            trace_id=str(data.get("trace_id") or uuid.uuid4()),
            events=[TraceEvent.from_dict(e) for e in data.get("events", [])],
        )


def _branch_path() -> list[int]:
    scope = current_scope.get()
    return scope.branch_path_list if scope is not None else []


class ExecutionTracer(TaskCollection):
    """Records a controller's execution as :class:`TraceEvent` s (TensorRT-LLM
    compatible): each message of a :class:`ChatTask` conversation once (context
    messages before the yield, the assistant's reply after it, with its token
    counts and tool calls), a :class:`GenerationTask` as a user and an
    assistant message, an :class:`MCPCallTask` as a ``tool_call`` with its
    duration, and forks (``ParallelProcess``, or several tasks yielded at once)
    as ``parallel_start`` / ``parallel_end`` around their branches' events.
    :meth:`export_trace` gives the :class:`ExecutionTrace`.  Attach it with
    :func:`with_execution_tracing`.
    """

    def __init__(self, controller_name: str = "root") -> None:
        self.controller_name = controller_name
        self.events: list[TraceEvent] = []
        self._start: dict[int, float] = {}
        self._conversations: dict[int, int] = {}
        self._recorded: dict[int, int] = {}  # messages of a chat already recorded
        self._context: dict[int, list[TraceEvent]] = {}  # a yielded task's prompt messages

    def _conversation(self, task: Task) -> int:
        return self._conversations.setdefault(id(task), len(self._conversations))

    def before_yield(self, tasks: list[Task]) -> None:
        now = time.perf_counter()
        path = _branch_path()
        if any(isinstance(t, DropKVCacheTask) for t in tasks):
            self.events.append(TraceEvent("drop_kv_cache", list(path)))
        for t in tasks:
            self._start[id(t)] = now
            if isinstance(t, ChatTask):
                t.enable_token_counting = True
                conv = self._conversation(t)
                first = self._recorded.get(id(t), 0)
                context = self._context[id(t)] = []
                for i, m in enumerate(t.messages[first:], first):
                    text = _text(m)
                    context.append(
                        TraceEvent(
                            "message",
                            list(path),
                            conv,
                            _role(m),
                            content=text,
                            message_index=i,
                            system_prompt_id=getattr(text, "system_prompt_id", None),
                        )
                    )
                self._recorded[id(t)] = len(t.messages)
            elif isinstance(t, GenerationTask):
                self._context[id(t)] = [
                    TraceEvent(
                        "message",
                        list(path),
                        self._conversation(t),
                        "user",
                        content=t.input_str,
                        message_index=0,
                    )
                ]

    def _event_after(self, task: Task, duration_ms: float) -> TraceEvent | None:
        path = _branch_path()
        if isinstance(task, GenerationTask):
            calls = None
            index = 1  # a generation: its prompt, then this
            if isinstance(task, ChatTask):
                reply = task.messages[-1] if task.messages else None
                if isinstance(reply, AssistantMessage) and reply.tool_calls:
                    calls = [str(c) for c in reply.tool_calls]
                self._recorded[id(task)] = len(task.messages)
                index = len(task.messages) - 1
            return TraceEvent(
                "message",
                list(path),
                self._conversation(task),
                "assistant",
                tool_calls=calls,
                prompt_tokens=task.prompt_tokens_num,
                completion_tokens=task.completion_tokens_num,
                reasoning_tokens=getattr(task, "reasoning_tokens_num", None),
                finish_reason=task.finish_reason,
                duration_ms=duration_ms,
                content=task.output_str,
                message_index=index,
            )
        if isinstance(task, MCPCallTask):
            return TraceEvent(
                "tool_call",
                list(path),
                tool_call_id=task.tool_call_id,
                tool_name=task.tool_name,
                duration_ms=duration_ms,
            )
        return None

    def after_yield(self, tasks: list[Task]) -> None:
        """Each task's prompt messages, then its reply (or tool call); several
        tasks yielded at once are a fork: task ``i``'s events on branch ``i``."""
        now = time.perf_counter()
        made: list[list[TraceEvent]] = []
        for t in tasks:
            start = self._start.pop(id(t), now)
            events = self._context.pop(id(t), [])
            event = self._event_after(t, (now - start) * 1000)
            if event is not None:
                events.append(event)
            if events:
                made.append(events)
        if len(made) <= 1:
            for events in made:
                self.events.extend(events)
            return
        path = _branch_path()
        self.events.append(TraceEvent("parallel_start", list(path), num_branches=len(made)))
        for i, events in enumerate(made):
            for event in events:
                event.branch_path = [*path, i]
            self.events.extend(events)
        self.events.append(TraceEvent("parallel_end", list(path)))

    def on_parallel_start(self, num_branches: int) -> None:
        self.events.append(TraceEvent("parallel_start", _branch_path(), num_branches=num_branches))

    def on_parallel_end(self, num_branches: int) -> None:
        self.events.append(TraceEvent("parallel_end", _branch_path()))

    def export_trace(self) -> ExecutionTrace:
        return ExecutionTrace(events=list(self.events))


def with_execution_tracing(controller_name: str = "root") -> Callable[[C], C]:
    """Class decorator: trace the controller with an :class:`ExecutionTracer`
    (its ``task_collections["execution_tracer"]``)."""
    return with_task_collection(
        "execution_tracer", ExecutionTracer, controller_name=controller_name
    )


def _role(m: RoleMessage | dict[str, Any]) -> str | None:
    return m.role if isinstance(m, RoleMessage) else m.get("role")


def _text(m: RoleMessage | dict[str, Any]) -> str | None:
    value = m.content if isinstance(m, RoleMessage) else m.get("content")
    return value if isinstance(value, str) else None


def tokenize_trace_scope() -> Callable[[C], C]:
    """Class decorator (TensorRT-LLM compatible): after the controller's
    ``process``, count the tokens of every system, user and tool message its
    :class:`ExecutionTracer` recorded, with :class:`TokenizeTask` s on the
    ``"tokenize"`` worker (the engine's own tokenizer), into each event's
    ``tokens`` (``tokens_source="tokenize_endpoint"``).  A conversation's system
    message then gets the first assistant turn's prompt tokens minus its user
    messages' (the template's own tokens are the system message's).  Apply it
    outside :func:`with_execution_tracing`."""

    def decorator(controller_cls: C) -> C:
        original = controller_cls.process  # type: ignore[attr-defined]

        def process(self: Any, tasks: list[Task], **kwargs: Any) -> Any:
            yield from original(self, tasks, **kwargs)
            tracer = getattr(self, "task_collections", {}).get("execution_tracer")
            if tracer is None:
                return
            events = [
                e
                for e in tracer.events
                if e.event_type == "message" and e.role in ("system", "user", "tool") and e.content
            ]
            if not events:
                return
            counts = [
                TokenizeTask(content=e.content, event=e, worker_tag=TokenizeWorkerTag.TOKENIZE)
                for e in events
            ]
            yield counts
            for t in counts:
                t.event.tokens, t.event.tokens_source = t.token_count, "tokenize_endpoint"
            _balance_system_tokens(tracer.events)

        controller_cls.process = process  # type: ignore[attr-defined]
        return controller_cls

    return decorator


def _balance_system_tokens(events: list[TraceEvent]) -> None:
    by_conversation: dict[int, list[TraceEvent]] = {}
    for e in events:
        if e.event_type == "message" and e.conversation_id is not None:
            by_conversation.setdefault(e.conversation_id, []).append(e)
    for messages in by_conversation.values():
        system = next((m for m in messages if m.role == "system"), None)
        first = next(
            (i for i, m in enumerate(messages) if m.role == "assistant" and m.prompt_tokens),
            None,
        )
        if system is None or first is None:
            continue
        users = [m for m in messages[:first] if m.role == "user"]
        if all(u.tokens is not None for u in users):
            prompt = messages[first].prompt_tokens or 0
            system.tokens = prompt - sum(u.tokens or 0 for u in users)
