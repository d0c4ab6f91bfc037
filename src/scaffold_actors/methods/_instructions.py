"""Instructions chosen by the question: step by step for arithmetic, a short
sentence for a fact."""

from __future__ import annotations

import re
from typing import Any

import attrs

__all__ = ["ByQuestionKind", "asks_for_a_number", "last_user_message", "question_text"]

_NUMERIC = re.compile(
    r"(?i)\d|[+*/=^\u00d7\u00f7]|\b(?:how (?:many|much|long|far|old)|calculate|compute|"
    r"solve|sum|product|difference|percent|average|total|equation)\b"
)


def asks_for_a_number(question: str) -> bool:
    """Whether ``question`` looks like arithmetic (a digit, an operator, "how
    many", "solve", ...).  Reads the first 2,000 characters only (bounded on any
    input)."""
    return _NUMERIC.search(question[:2000]) is not None


def last_user_message(messages: Any) -> int | None:
    """The index of a chat's last user message with text content, ``None`` when
    it has none."""
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if (
            isinstance(message, dict)
            and message.get("role") == "user"
            and isinstance(message.get("content"), str)
        ):
            return i
    return None


def question_text(input_str: str | None, messages: Any) -> str:
    """The question a task asks: its text prompt, else the last user message of
    its chat ("" when it has none)."""
    if input_str is not None:
        return input_str
    chat = list(messages or ())
    i = last_user_message(chat)
    return "" if i is None else str(chat[i]["content"])


def _optional_str(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"ByQuestionKind.{attribute.name} must be a str or None, got {value!r}")


@attrs.frozen
class ByQuestionKind:
    """An instruction for :class:`Sampler` that depends on the question:
    ``numeric`` where the question asks for a number (:func:`asks_for_a_number`),
    else ``other``; ``None`` adds none.

    The methods that reason step by step use ``ByQuestionKind(COT, PLAIN)`` in
    ``scaffold run``, ``bench`` and ``serve``: asked to reason step by step over
    "What is the capital of France?", the embedded model listed and counted and
    answered "2"; asked for one short sentence it says "The capital of France is
    Paris" (docs/methods.md).  Calling it never blocks."""

    numeric: str | None = attrs.field(validator=_optional_str)
    other: str | None = attrs.field(validator=_optional_str)

    def __call__(self, question: str) -> str | None:
        return self.numeric if asks_for_a_number(question) else self.other
