"""Engine hints: tasks that ask the engine about a prompt rather than to generate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from engine_bridge import EngineRequest, SamplingParams

from ._chat import ChatTask, RoleMessage
from ._errors import InvalidTaskError
from ._tasks import Task

__all__ = ["TokenizeTask"]


@attrs.define(slots=False, eq=False)
class TokenizeTask(Task):
    """Count a prompt's tokens with the generation engine's own tokenizer
    (TensorRT-LLM compatible).

    Inputs: exactly one of ``input_str`` (or ``content``, TensorRT-LLM's name),
    ``messages`` (OpenAI dicts or :class:`RoleMessage`) or ``chat_task`` (its
    messages); ``event`` (a trace event the count is for) is carried along.  Output:
    ``token_count``, as a generation of that prompt would see it (chat template
    included).  Every engine answers: local engines with their tokenizer, an
    HTTP engine by asking its server's ``/tokenize``.  An engine that cannot
    tell raises :class:`EngineError` (``tokenize_error`` stays ``None``: a
    failure is raised, never stored).
    """

    worker_tag: Any = "generation"
    input_str: str | None = None
    messages: list[Any] | None = None
    chat_task: ChatTask | None = None
    content: str | None = None
    event: Any = None
    token_count: int | None = None
    tokenize_error: str | None = None

    input_fields: ClassVar[tuple[str, ...]] = ("input_str", "messages")
    output_fields: ClassVar[tuple[str, ...]] = ("token_count",)

    def validate(self) -> None:
        super().validate()
        if self.content is not None and self.input_str is None:
            self.input_str = self.content
        given = [f for f in ("input_str", "messages", "chat_task") if getattr(self, f) is not None]
        if len(given) != 1:
            raise InvalidTaskError(
                f"{type(self).__name__}.input_str",
                f"exactly one of input_str, messages or chat_task must be set, got {given or 'none'}",
            )

    def inputs(self) -> dict[str, Any]:
        return {"input_str": self.input_str, "messages": self._messages()}

    def _messages(self) -> list[dict[str, str]] | None:
        if self.chat_task is not None:
            raw: list[Any] = self.chat_task.messages_to_dict_content()
        elif self.messages is not None:
            raw = list(self.messages)
        else:
            return None
        out = []
        for m in raw:
            d = (
                m.to_dict()
                if isinstance(m, RoleMessage)
                else dict(m)
                if isinstance(m, Mapping)
                else m
            )
            out.append({"role": str(d.get("role")), "content": str(d.get("content") or "")})
        return out

    def engine_request(self) -> EngineRequest:
        """The prompt as an engine request (one token asked, never sent)."""
        messages = self._messages()
        if messages is not None:
            return EngineRequest(SamplingParams(max_tokens=1), messages=messages)
        return EngineRequest(SamplingParams(max_tokens=1), prompt=self.input_str)
