"""Dynasor-CoT as TensorRT-LLM's contrib generator controller."""

from __future__ import annotations

import enum
from collections.abc import Generator
from typing import Any

from ...._hints import TokenizeTask
from ...._tasks import GenerationTask, Task
from ..._controllers import Controller
from ._evaluator import equal_group

__all__ = ["DynasorGenerationController"]

_UNCERTAIN = ("wait", "hold", "but", "okay", "no", "hmm")
_PROBE = "... Oh, I suddenly got the answer to the whole problem, **Final Answer**\n\n\\[ \\boxed{"
_ANSWER = "\n\n... Oh, I have got the answer to the whole problem\n**Final Answer:**\n\\[\n \\boxed{"
_ANSWER_AFTER_THINK = (
    "\n\n...</think>\n Oh, I have got the answer to the whole problem\n**Final Answer:**\n\\[\n \\boxed{"
)


class DynasorGenerationController(Controller):
    """Reason in chunks of ``chunk_size`` tokens; after each, probe the reasoning
    so far for its answer (the prompt, the reasoning, then a suffix that asks for
    the boxed answer; 20 tokens).  Once ``certainty_threshold`` probes in a row
    give the same non-empty answer with no hesitation word, answer with it;
    otherwise stop at ``max_tokens`` (prompt included) with the reasoning as the
    output.  Each round's chunk and probe run together.

    ``generation_dir``: the model's folder, whose tokenizer counts the prompt's
    tokens (TensorRT-LLM's); when it is not a folder transformers can read (a
    served model's name), the generation worker counts them
    (:class:`TokenizeTask`), so no count is guessed.  Answers are compared by
    :func:`equal_group` (bounded normalisation, no sympy in the event loop).
    """

    class WorkerTag(enum.Enum):
        GENERATION = "generation_with_dynasor_cot"

    def __init__(
        self,
        generation_dir: str,
        max_tokens: int = 8192,
        certainty_threshold: int = 3,
        chunk_size: int = 64,
        streaming: bool = False,
    ) -> None:
        super().__init__()
        if certainty_threshold < 1 or chunk_size < 1 or max_tokens < 1:
            raise ValueError("max_tokens, certainty_threshold and chunk_size must be >= 1")
        self.generation_dir = generation_dir
        self.max_tokens = max_tokens
        self.certainty_threshold = certainty_threshold
        self.chunk_size = chunk_size
        self.streaming = streaming
        self.uncertain_words = list(_UNCERTAIN)
        self.probe_suffix = _PROBE
        self.answer_suffix = _ANSWER
        self.answer_suffix_with_marker = _ANSWER_AFTER_THINK
        self.tokenizer = _tokenizer(generation_dir)

    def _count(self, text: str) -> Generator[Any, Any, int]:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        count = TokenizeTask(content=text, worker_tag=self.WorkerTag.GENERATION)
        yield [count]
        assert count.token_count is not None
        return count.token_count

    def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
        result: Any = tasks[0]
        prompt = result.input_str
        if not isinstance(prompt, str):
            raise ValueError("DynasorGenerationController needs a text prompt (input_str)")
        used = (yield from self._count(prompt)) + (yield from self._count(self.probe_suffix))
        proposer = GenerationTask(
            max_tokens=self.chunk_size, temperature=0.6, top_p=0.95,
            worker_tag=self.WorkerTag.GENERATION,
        )  # fmt: skip
        probe = GenerationTask(
            max_tokens=20, temperature=0.6, top_p=0.95, worker_tag=self.WorkerTag.GENERATION
        )
        answers: list[str] = []
        probes: list[str] = []
        current = prompt
        for _ in range(used, self.max_tokens, self.chunk_size):
            proposer.input_str = current
            probe.input_str = current + self.probe_suffix
            yield [proposer, probe]
            text = probe.output_str or ""
            answers.append(self.obtain_answer(text))
            probes.append(text)
            recent, k = answers[-self.certainty_threshold :], self.certainty_threshold
            confident = [
                not any(w in p.lower() for w in self.uncertain_words) for p in probes[-k:]
            ]
            if equal_group(recent) and self.count_not_empty(recent) == k and sum(confident) == k:
                suffix = self.answer_suffix if "</think>" in current else self.answer_suffix_with_marker
                result.output_str = current + suffix + answers[-1] + "}\n\\]"
                return
            current += proposer.output_str or ""
        result.output_str = current

    @staticmethod
    def obtain_answer(text: str) -> str:
        """The text before the first ``}`` that closes no ``{`` of its own (the
        probe suffix opened ``\\boxed{``); ``""`` when there is none."""
        depth = 0
        for i, c in enumerate(text):
            if c == "{":
                depth += 1
            elif c == "}":
                if depth == 0:
                    return text[:i]
                depth -= 1
        return ""

    @staticmethod
    def count_not_empty(answers: list[str]) -> int:
        return sum(1 for a in answers if a != "")


def _tokenizer(folder: str) -> Any:
    """The tokenizer of ``folder``, or None when it is not a model folder."""
    import os

    if not os.path.isdir(folder):
        return None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    return AutoTokenizer.from_pretrained(folder, use_fast=True)
