"""``system_prompt``: a system-prompt template with a stable identity."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Self

__all__ = ["system_prompt"]

# TensorRT-LLM's namespace, so the same name gives the same id in both frameworks
_NAMESPACE = uuid.UUID("4f9c4d4e-1c7e-4d8a-9f8a-3c1c0e1c1f3d")


class _SystemPrompt(str):
    """A ``str`` with a ``system_prompt_id``.  ``format`` / ``format_map`` keep the
    id (it names the template, not the rendered text); other string operations
    give a plain ``str``.  Copying and pickling keep it."""

    __slots__ = ("system_prompt_id",)
    system_prompt_id: str

    def __new__(cls, content: str, system_prompt_id: str) -> Self:
        self = super().__new__(cls, content)
        self.system_prompt_id = system_prompt_id
        return self

    def format(self, *args: Any, **kwargs: Any) -> _SystemPrompt:
        return _SystemPrompt(str.format(self, *args, **kwargs), self.system_prompt_id)

    def format_map(self, mapping: Mapping[str, Any]) -> _SystemPrompt:  # type: ignore[override]
        return _SystemPrompt(str.format_map(self, mapping), self.system_prompt_id)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (_SystemPrompt, (str(self), self.system_prompt_id))


def system_prompt(content: str, *, name: str) -> str:
    """Tag a system-prompt template with a stable id (TensorRT-LLM compatible).

    The result is a ``str`` usable anywhere the template was (``SystemMessage(...)``)
    with ``system_prompt_id``: a UUIDv5 of ``name`` in TensorRT-LLM's namespace,
    so the same ``name`` gives the same id here and there.  Raises
    :class:`TypeError` unless ``content`` and ``name`` are strings.
    """
    if not isinstance(content, str) or not isinstance(name, str):
        raise TypeError("system_prompt(content, name=...) takes strings")
    return _SystemPrompt(content, str(uuid.uuid5(_NAMESPACE, name)))
