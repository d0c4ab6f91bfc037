"""Answer helpers with TensorRT-LLM's names (``tensorrt_llm.scaffolding.math_utils``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from ..methods._answers import extract_boxed

__all__ = [
    "extract_answer_from_boxed",
    "extract_answer_with_regex",
    "get_digit_majority_vote_result",
    "get_majority_result",
]

#: an integer, optionally negative (TensorRT-LLM's "digit" answers): no decimals
_INTEGER = re.compile(r"-?[0-9]+")


def extract_answer_from_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (nested braces kept), or ``None``."""
    return extract_boxed(text)


def extract_answer_with_regex(text: str, pattern: str = r"The final answer is (.+)") -> str | None:
    m = re.findall(pattern, text)
    return m[-1].strip() if m else None


def get_majority_result(
    results: Sequence[Any],
    result_extractor: Callable[[Any], Any] = lambda r: r,
    result_validator: Callable[[Any], bool] = lambda a: True,
) -> tuple[int | None, Any]:
    """``(index, answer)``: the most common valid answer among ``results`` and
    the index of the first result that gave it; ``(None, None)`` when no result
    has a valid answer.  Each result's answer is ``result_extractor(result)``;
    an answer is valid when it is not ``None`` and ``result_validator`` returns
    ``True``.  Ties go to the answer seen first."""
    answers = [result_extractor(r) for r in results]
    counts: dict[Any, int] = {}
    for answer in answers:
        if answer is not None and result_validator(answer) is True:
            counts[answer] = counts.get(answer, 0) + 1
    if not counts:
        return None, None
    winner = max(counts, key=counts.__getitem__)  # (first of the most common)
    return answers.index(winner), winner


def get_digit_majority_vote_result(results: Sequence[str]) -> tuple[int, str | None]:
    """``(index, answer)`` of the majority of the results' boxed integer answers
    (``\\boxed{42}``, ``\\boxed{-7}``; decimals and text do not count);
    ``(0, None)`` when no result has one."""
    index, answer = get_majority_result(
        results,
        result_extractor=extract_answer_from_boxed,
        result_validator=lambda a: bool(_INTEGER.fullmatch(a)),
    )
    if index is None:
        return 0, None
    return index, answer
