"""Extracting a final answer from a completion, for voting."""

from __future__ import annotations

import atexit
import functools
import logging
import re
from fractions import Fraction

from ._mathcheck import MathChecker

__all__ = [
    "cut_answer",
    "extract_answer",
    "extract_boxed",
    "is_placeholder",
    "math_equivalent",
    "normalize_number",
    "sample_answer",
]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_HASHES = re.compile(r"####\s*([^\n]+)")
log = logging.getLogger("scaffold_actors.methods")


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (nested braces allowed)."""
    return _boxed_at(text, text.rfind("\\boxed"))


def _boxed_at(text: str, start: int) -> str | None:
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


#: how many ``\\boxed{}`` from the end are looked at for a real answer
MAX_BOXES = 8

_PLACEHOLDER = re.compile(
    r"""(?ix)^(?:
        \\text\{\s*(?P<inner>[^{}]*)\s*\}       # \text{...}: judged by its inner text
      | (?:(?:your|the|my|final|correct)\s+)*
        (?:answer|ans|result|solution|number|value)s?(?:\s+here)?
      | [.\u2026?_\s-]*                          # empty, dots, question marks, blanks
      | <[^<>]*> | \[[^\[\]]*\]                    # <answer>, [answer]
    )$"""
)


def is_placeholder(answer: str) -> bool:
    """Whether a boxed answer is a placeholder rather than an answer: empty,
    ``answer``, ``your final answer``, ``...``, ``<answer>``, ``\\text{answer}``
    (what a model copies from an instruction such as "give the answer as
    ``\\boxed{answer}``")."""
    m = _PLACEHOLDER.match(answer.strip())
    if m is None:
        return False
    inner = m.group("inner")
    return inner is None or is_placeholder(inner)


def normalize_number(text: str) -> str | None:
    """``"1,000"`` -> ``"1000"``, ``"0.50"`` -> ``"1/2"``, ``"4/2"`` -> ``"2"``; else None."""
    s = text.strip().rstrip(".").replace(",", "").replace("$", "")
    digits = s[1:] if s[:1] in "+-" else s
    if digits.isascii() and digits.isdigit():  # an integer: what Fraction would say, faster
        return str(int(s))
    try:
        value = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return str(value)


#: a text answer (no number, no box) is at most this many words: a longer last
#: line is reasoning, not an answer
MAX_TEXT_ANSWER_WORDS = 24
_LIST_MARKER = re.compile(r"(?i)^\s*(?:[-*\u2022]|\(?\d{1,3}[.)]|(?:step|part)\s*\d{1,3}\s*[:.)])\s+")
_ANSWER_IS = re.compile(
    r"(?i)\b(?:final answer|the answer|answer)\s*(?:is\s*:?|:|=)\s*(?P<answer>[^\n]{1,300})"
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
_TEXT_WRAP = re.compile(r"^\\(?:text|textbf|mathrm|mbox)\{(?P<inner>[^{}]*)\}$")
#: only the end of a completion is searched for a stated answer or a last line
_TAIL_CHARS = 4000


def _clean(answer: str) -> str:
    """A stated answer as a vote: markdown emphasis, quotes and the closing
    punctuation dropped, whitespace collapsed, ``\\text{X}`` unwrapped."""
    answer = " ".join(answer.replace("**", "").replace("__", "").split())
    answer = answer.strip(" \"'`*").rstrip(".!;:,").strip(" \"'`*")
    m = _TEXT_WRAP.match(answer)
    return m.group("inner").strip() if m else answer


_PLEASANTRY = re.compile(
    r"(?i)^(?:i hope|hope this|let me know|feel free|good luck|thanks?\b|thank you|"
    r"is there anything)"
)
_YES_NO = re.compile(r"(?i)^(yes|no)\b")
#: a last line that says it has no answer is none
_NO_ANSWER = re.compile(
    r"(?i)^(?:i(?:'m| am) not sure|not sure|i (?:do not|don'?t) know|no idea|unknown|"
    r"i can(?:not|'t)|i'?m unable|i am unable|sorry)"
)


#: "the answer is correct" is a verdict on an answer, not one
_VERDICT = re.compile(
    r"(?i)^(?:not )?(?:correct|incorrect|right|wrong|as follows|(?:given |shown )?(?:below|above))$"
)


def _stated(match: re.Match[str]) -> str | None:
    """The answer a ``the answer is X`` match states (cleaned), ``None`` for a
    verdict ("the answer is correct")."""
    said = _clean(match.group("answer"))
    return None if _VERDICT.match(said) else said


def _is_verdict(line: str) -> bool:
    m = _ANSWER_IS.search(line)
    return m is not None and _stated(m) is None


def _unmarked(line: str) -> str:
    previous = None
    while previous != line:  # "- 5. x": both markers
        previous, line = line, _LIST_MARKER.sub("", line).strip()
    return line


def _last_line(text: str) -> str:
    """The last line that says something (list markers, closing pleasantries
    such as "I hope this helps!" and verdicts such as "The answer is correct."
    skipped)."""
    for line in reversed(text.splitlines()):
        line = _unmarked(line)
        if line and not _PLEASANTRY.match(line) and not _is_verdict(line):
            return line
    return ""


def extract_answer(text: str | None) -> str | None:
    """The final answer of a completion, or ``None``.  In order: the last
    ``\\boxed{}`` that is not a placeholder (:func:`is_placeholder`:
    ``\\boxed{answer}`` echoed from the instruction is no vote), ``#### x``, a
    stated answer (``the answer is X``, ``Answer: X``), then the completion's
    last line (closing pleasantries skipped): its last number (a list marker
    such as ``5.`` is not one), or, when it has none, its first sentence as a
    text answer (at most :data:`MAX_TEXT_ANSWER_WORDS` words: "The capital of
    France is Paris"; "Yes" or "No" for a sentence that starts with one).
    Numbers are normalised so ``"1,000"`` and ``"1000.0"`` agree.  A
    completion with a placeholder box and nothing else stated falls back to its
    last number.  Bounded: only the last 4,000 characters are searched beyond
    the boxes."""
    if not text:
        return None
    candidate, boxes = _real_box(text)
    tail = text[-_TAIL_CHARS:]
    if candidate is None:
        m = _HASHES.findall(tail)
        if m:
            candidate = m[-1].strip()
    if candidate is None:
        stated = [x for x in map(_stated, _ANSWER_IS.finditer(tail)) if x is not None]
        said = stated[-1] if stated else ""
        if said and "\\boxed" not in said and not is_placeholder(said):  # (not the format echoed)
            nums = _NUMBER.findall(said)
            candidate = nums[-1] if nums else _SENTENCE_END.split(said, 1)[0]
    if candidate is None:
        line = _last_line(tail)
        nums = _NUMBER.findall(line)
        if nums:
            candidate = nums[-1]
        elif boxes:  # it meant to box its answer: its last number (not a list's), if any
            nums = _NUMBER.findall("\n".join(_unmarked(x) for x in tail.splitlines()))
            candidate = nums[-1] if nums else None
        elif line and not _ANSWER_IS.search(line):  # (a stated placeholder is no answer)
            sentence = _clean(_SENTENCE_END.split(line, 1)[0])
            yes_no = _YES_NO.match(sentence)
            if _NO_ANSWER.match(sentence):
                pass  # "I am not sure": no answer
            elif yes_no:  # "Yes, the sky is blue": the vote is "Yes"
                candidate = yes_no.group(1).capitalize()
            elif len(sentence.split()) <= MAX_TEXT_ANSWER_WORDS:
                candidate = sentence
    return _normalized(candidate)


def _real_box(text: str) -> tuple[str | None, bool]:
    """The last ``\\boxed{}`` answer of ``text`` that is not a placeholder
    (cleaned; ``None`` when there is none), and whether ``text`` has a box."""
    start = len(text)
    boxes = False
    for _ in range(MAX_BOXES):  # the last boxed answer that is not a placeholder
        start = text.rfind("\\boxed", 0, start)
        if start == -1:
            break
        boxes = True
        boxed = _boxed_at(text, start)
        if boxed is not None and not is_placeholder(boxed):
            return _clean(boxed), True
    return None, boxes


def _normalized(candidate: str | None) -> str | None:
    """An answer as it votes: stripped, a number normalised; ``None`` if empty."""
    if candidate is None:
        return None
    candidate = candidate.strip()
    if not candidate:
        return None
    number = normalize_number(candidate)
    return number if number is not None else candidate


def sample_answer(text: str | None, finish_reason: str | None) -> str | None:
    """The answer of one sample: :func:`cut_answer` when it was cut by
    ``max_tokens`` (finish reason ``"length"``), else :func:`extract_answer`."""
    return cut_answer(text) if finish_reason == "length" else extract_answer(text)


def cut_answer(text: str | None) -> str | None:
    """The answer of a completion cut by ``max_tokens``: only a boxed one (it
    was written out before the cut); a number or a sentence in cut text is not
    an answer."""
    return _normalized(_real_box(text)[0]) if text else None


#: answers longer than this are never parsed: only equal strings match
MAX_ANSWER_CHARS = 200

_CHECKER = MathChecker(timeout=5.0)
atexit.register(_CHECKER.close)


def math_equivalent(a: str, b: str) -> bool:
    """Whether two final answers are mathematically equal: ``"1/2"``, ``"0.5"``,
    ``"\\frac{1}{2}"`` and ``"\\dfrac12"`` agree; so do ``"x^2+2x"`` and ``"2x+x^2"``.

    Uses Hugging Face's math-verify (LaTeX and expression parsing with sympy);
    equal strings are equal without parsing.  Never raises: an answer that does
    not parse is only equal to the same string.

    Bounded, because the answers are model output: answers longer than
    :data:`MAX_ANSWER_CHARS` are not parsed, and the comparison runs in a child
    process that is killed after 5 s (``9^{9^{9}}`` would keep sympy busy for
    minutes); a verdict that runs out is "not equivalent" and is logged on the
    ``scaffold_actors.methods`` logger.  It blocks the calling thread meanwhile:
    inside an event loop, call it through a thread (``MajorityVote`` does that
    with every ``equivalent`` function).
    """
    if a == b or a.casefold() == b.casefold():
        return True
    if len(a) > MAX_ANSWER_CHARS or len(b) > MAX_ANSWER_CHARS:
        log.warning("answer longer than %d characters, compared as a string only", MAX_ANSWER_CHARS)
        return False
    return _verify(a, b)


@functools.lru_cache(maxsize=4096)
def _verify(a: str, b: str) -> bool:
    return _CHECKER.equivalent(a, b)
