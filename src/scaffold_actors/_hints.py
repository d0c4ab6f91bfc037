"""Engine hints: tasks that ask the engine about a prompt rather than to generate."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from engine_bridge import EngineRequest, InvalidRequestError, KVCacheDrop, SamplingParams

from ._chat import ChatTask, RoleMessage
from ._errors import InvalidTaskError
from ._tasks import Task

__all__ = ["DropKVCacheTask", "TokenizeTask"]


@dataclasses.dataclass(eq=False)
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


@dataclasses.dataclass(eq=False, init=False)
class DropKVCacheTask(Task):
    """Tell the engine a chat is over, so it frees the prefix-cache blocks that
    hold it (TensorRT-LLM compatible: ``DropKVCacheTask(chat_task, worker_tag)``).

    Inputs: ``chat_task`` (the finished :class:`ChatTask`, its assistant reply
    included); ``messages_to_retain`` defaults to the chat's leading system
    messages, whose blocks stay (they are shared by other conversations); give
    another list to keep more or less (it must be the chat's first messages).
    Output: ``freed_blocks``, the blocks the engine says it freed (``None``
    when it took the hint without a count, as an HTTP server may).

    The generation worker hands it to its engine (:meth:`Engine.drop_kv_cache`):
    :class:`~engine_bridge.HFEngine` frees transformers' cached blocks,
    :class:`~engine_bridge.OpenAIEngine` posts it to the server's
    ``/_control/kv_cache/truncate`` (trtllm-serve's, ours), the simulated engine
    evicts from its prefix cache.  An engine without a releasable prefix cache
    raises :class:`~engine_bridge.NotSupportedError`: the task fails with it,
    it is never reported done.  A ``messages_to_retain`` that is not the chat's
    first messages raises :class:`InvalidTaskError` at submission.
    ``partial_prefix`` is TensorRT-LLM's placeholder (unused there too).
    """

    chat_task: ChatTask | None = None
    messages_to_retain: list[Any] = dataclasses.field(default_factory=list)
    partial_prefix: str | None = None
    freed_blocks: int | None = None

    input_fields: ClassVar[tuple[str, ...]] = ("messages_to_retain",)
    output_fields: ClassVar[tuple[str, ...]] = ("freed_blocks",)

    def __init__(
        self,
        chat_task: ChatTask | None = None,
        worker_tag: Any = "generation",
        *,
        messages_to_retain: list[Any] | None = None,
        **fields: Any,
    ) -> None:
        if messages_to_retain is None:
            messages = chat_task.messages if chat_task is not None else []
            messages_to_retain = list(messages[: KVCacheDrop.leading_system(messages)])
        Task.__init__(self, worker_tag=worker_tag)
        self.chat_task = chat_task
        self.messages_to_retain = messages_to_retain
        self.partial_prefix = None
        self.freed_blocks = None
        for name, value in fields.items():
            if name not in _DROP_FIELDS:
                raise TypeError(f"DropKVCacheTask() got an unexpected keyword argument {name!r}")
            setattr(self, name, value)

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.chat_task, ChatTask):
            raise InvalidTaskError(
                f"{type(self).__name__}.chat_task",
                f"must be the finished ChatTask, got {type(self.chat_task).__name__}",
            )
        self.hint()

    def hint(self) -> KVCacheDrop:
        """The hint as the engine takes it.  Raises :class:`InvalidTaskError`
        naming the field when the chat is empty or ``messages_to_retain`` is not
        its first messages."""
        chat = self.chat_task
        assert chat is not None
        inputs = chat.request_inputs()
        retained = [
            m.to_dict() if isinstance(m, RoleMessage) else m for m in self.messages_to_retain
        ]
        try:
            return KVCacheDrop.retaining(inputs["messages"], retained, tools=inputs["tools"])
        except InvalidRequestError as e:
            raise InvalidTaskError.of(type(self).__name__, e) from None


_DROP_FIELDS = frozenset(f.name for f in dataclasses.fields(DropKVCacheTask))
