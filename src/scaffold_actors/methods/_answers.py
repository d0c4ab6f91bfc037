"""Extracting a final answer from a completion, for voting."""

from __future__ import annotations

import functools
import logging
import re
from fractions import Fraction

__all__ = ["extract_answer", "extract_boxed", "math_equivalent", "normalize_number"]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_HASHES = re.compile(r"####\s*([^\n]+)")


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (nested braces allowed)."""
    start = text.rfind("\\boxed")
    if start == -1:
        return None
    i = text.find("{", start)
    if i == -1:
        return None
    depth = 0
    for j in range(i, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def normalize_number(text: str) -> str | None:
    """``"1,000"`` -> ``"1000"``, ``"0.50"`` -> ``"1/2"``, ``"4/2"`` -> ``"2"``; else None."""
    s = text.strip().rstrip(".").replace(",", "").replace("$", "")
    try:
        value = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return str(value)


def extract_answer(text: str | None) -> str | None:
    """The final answer of a completion: ``\\boxed{}``, then ``#### x``, then the
    last number.  Numbers are normalised so ``"1,000"`` and ``"1000.0"`` agree."""
    if not text:
        return None
    candidate = extract_boxed(text)
    if candidate is None:
        m = _HASHES.findall(text)
        if m:
            candidate = m[-1].strip()
    if candidate is None:
        nums = _NUMBER.findall(text)
        if not nums:
            return None
        candidate = nums[-1]
    candidate = candidate.strip()
    if not candidate:
        return None
    number = normalize_number(candidate)
    return number if number is not None else candidate


def math_equivalent(a: str, b: str) -> bool:
    """Whether two final answers are mathematically equal: ``"1/2"``, ``"0.5"``,
    ``"\\frac{1}{2}"`` and ``"\\dfrac12"`` agree; so do ``"x^2+2x"`` and ``"2x+x^2"``.

    Uses Hugging Face's math-verify (LaTeX and expression parsing with sympy);
    equal strings are equal without parsing.  Never raises: an answer that does
    not parse is only equal to the same string.
    """
    if a == b:
        return True
    return _verify(a, b)


@functools.lru_cache(maxsize=4096)
def _verify(a: str, b: str) -> bool:
    from math_verify import parse, verify

    # math-verify warns on every call that its (signal-based) timeouts are off
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        # timeouts off: they use signals, which only work in the main thread
        pa = parse(_as_latex(a), parsing_timeout=None)
        pb = parse(_as_latex(b), parsing_timeout=None)
        return bool(pa and pb and verify(pa, pb, timeout_seconds=None))
    except Exception:
        return False


def _as_latex(answer: str) -> str:
    s = answer.strip()
    return s if s.startswith("$") or "\\boxed" in s else f"${s}$"
