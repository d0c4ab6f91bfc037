"""Answer helpers with TensorRT-LLM's names."""

from __future__ import annotations

import re
from collections import Counter

from ..methods._answers import extract_answer, extract_boxed

__all__ = [
    "extract_answer_from_boxed",
    "extract_answer_with_regex",
    "get_digit_majority_vote_result",
]


def extract_answer_from_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``."""
    return extract_boxed(text)


def extract_answer_with_regex(text: str, pattern: str = r"The final answer is (.+)") -> str | None:
    m = re.findall(pattern, text)
    return m[-1].strip() if m else None


def get_digit_majority_vote_result(candidates: list[str]) -> str:
    """The first candidate whose (numeric) answer is the most common one; the
    first candidate if none has an answer."""
    answers = [extract_answer(c) for c in candidates]
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return candidates[0] if candidates else ""
    winner = counts.most_common(1)[0][0]
    return candidates[answers.index(winner)]
