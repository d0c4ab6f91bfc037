"""Whether probe answers agree, bounded: nothing here parses with sympy (a model
wrote the answers, and the comparison runs in the event loop's thread)."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["equal_group", "normalized"]

#: longest answer compared (a probe answers in at most ~20 tokens)
MAX_ANSWER_CHARS = 200

_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def normalized(answer: str) -> str:
    """An answer with the writing differences that do not change it removed:
    spaces, ``$``, ``\\left``/``\\right``, ``\\dfrac``/``\\tfrac``, ``\\text{}``
    wrappers, a trailing period, thousands separators and trailing zeros of a
    decimal number."""
    s = answer[:MAX_ANSWER_CHARS].strip().rstrip(".")
    s = s.replace("\\left", "").replace("\\right", "").replace("$", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\s+", "", s)
    plain = s.replace(",", "")
    if _NUMBER.fullmatch(plain):
        value = float(plain)
        return str(int(value)) if value == int(value) else repr(value)
    return s


def equal_group(answers: Sequence[str]) -> bool:
    """Whether every answer equals the first (after :func:`normalized`); an
    empty group is equal.  Stricter than TensorRT-LLM's sympy-based check
    (``1/2`` and ``0.5`` differ here), never slow: linear in the answers' length."""
    if not answers:
        return True
    first = normalized(answers[0])
    return all(normalized(a) == first for a in answers[1:])
