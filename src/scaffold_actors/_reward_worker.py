"""A worker that scores candidates with a transformers reward model."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Literal

import anyio
import anyio.to_thread

from ._tasks import RewardTask, Task
from ._worker import Handler, Worker

__all__ = ["RewardWorker"]


class RewardWorker(Worker):
    """Scores :class:`RewardTask` candidates with a local transformers model.

    ``kind="outcome"``: an ``AutoModelForSequenceClassification`` (an outcome reward
    model) scores each whole ``(question, candidate)`` pair; with one label the
    logit is the score, with several the probability of ``positive_label``.

    ``kind="process"``: an ``AutoModelForTokenClassification`` (a process reward
    model) scores each step.  The candidate is split on the task's
    ``step_separator`` (default ``"\\n\\n"``), ``step_tag`` is appended to every
    step, and the probability of ``positive_label`` at each tag is that step's
    score; the candidate's score aggregates them (``"min"``, ``"prod"``, ``"last"``
    or ``"mean"``) and ``step_scores`` keeps them all.

    The pair is rendered with the tokenizer's chat template (user: question,
    assistant: candidate) when it has one.  A task's candidates are scored in one
    forward pass on a worker thread; one model runs one batch at a time.
    Cancelling a task abandons its pass (the result is dropped).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        kind: Literal["outcome", "process"] = "outcome",
        device: str = "cpu",
        dtype: str = "float32",
        positive_label: int = -1,
        step_tag: str = "\n",
        aggregate: Literal["min", "prod", "last", "mean"] = "min",
        max_length: int = 4096,
        max_concurrency: int | None = None,
    ) -> None:
        path = os.fspath(model)
        if not os.path.exists(path):
            raise FileNotFoundError(f"reward model path {path!r} does not exist")
        if kind not in ("outcome", "process"):
            raise ValueError(f"kind must be 'outcome' or 'process', got {kind!r}")
        if aggregate not in ("min", "prod", "last", "mean"):
            raise ValueError(f"aggregate must be min, prod, last or mean, got {aggregate!r}")
        self.model_path = path
        self.kind = kind
        self.device = device
        self.dtype = dtype
        self.positive_label = positive_label
        self.step_tag = step_tag
        self.aggregate = aggregate
        self.max_length = max_length
        if max_concurrency is not None:
            self.max_concurrency = max_concurrency
        self.model: Any = None
        self.tokenizer: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RewardWorker({self.model_path!r}, kind={self.kind!r})"

    def load(self) -> None:
        """Load the model and tokenizer (blocking)."""
        if self.model is not None:
            return
        import torch
        from transformers import (
            AutoModelForSequenceClassification,
            AutoModelForTokenClassification,
            AutoTokenizer,
        )

        cls = (
            AutoModelForSequenceClassification
            if self.kind == "outcome"
            else AutoModelForTokenClassification
        )
        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = cls.from_pretrained(self.model_path, dtype=getattr(torch, self.dtype))
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        model.to(self.device).eval()
        self.model, self.tokenizer = model, tokenizer

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(self.load)
        yield

    def _render(self, question: str, answer: str) -> str:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            return str(tok.apply_chat_template(messages, tokenize=False))
        return f"{question}\n{answer}"

    def score(
        self, question: str, candidates: list[str], step_separator: str | None = None
    ) -> tuple[list[float], list[list[float]] | None]:
        """Score ``candidates`` for ``question`` (blocking; thread-safe)."""
        import torch

        self.load()
        with self._lock, torch.inference_mode():
            if self.kind == "outcome":
                texts = [self._render(question, c) for c in candidates]
                enc = self.tokenizer(
                    texts,
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                )
                logits = self.model(**enc.to(self.device)).logits.float()
                if logits.shape[-1] == 1:
                    return [float(x) for x in logits[:, 0]], None
                probs = logits.softmax(-1)[:, self.positive_label]
                return [float(x) for x in probs], None
            sep = step_separator if step_separator is not None else "\n\n"
            scores: list[float] = []
            all_steps: list[list[float]] = []
            tag_ids = self.tokenizer.encode(self.step_tag, add_special_tokens=False)
            if len(tag_ids) != 1:
                raise ValueError(f"step_tag {self.step_tag!r} must be a single token")
            tag = tag_ids[0]
            for cand in candidates:
                steps = [s for s in cand.split(sep) if s.strip()] or [cand]
                text = self._render(question, "".join(s + self.step_tag for s in steps))
                enc = self.tokenizer(
                    text, return_tensors="pt", truncation=True, max_length=self.max_length
                )
                ids = enc["input_ids"][0]
                logits = self.model(**enc.to(self.device)).logits.float()[0]
                positions = (ids == tag).nonzero().flatten().tolist()[-len(steps) :]
                probs = logits.softmax(-1)[:, self.positive_label]
                step_scores = [float(probs[p]) for p in positions]
                all_steps.append(step_scores)
                scores.append(_aggregate(step_scores, self.aggregate))
            return scores, all_steps

    async def reward_handler(self, task: RewardTask) -> None:
        assert task.input_str is not None
        scores, steps = await anyio.to_thread.run_sync(
            self.score,
            task.input_str,
            list(task.candidates),
            task.step_separator,
            abandon_on_cancel=True,
        )
        task.scores = scores
        task.step_scores = steps

    task_handlers: ClassVar[dict[type[Task], Handler]] = {RewardTask: reward_handler}


def _aggregate(values: list[float], how: str) -> float:
    if not values:
        return 0.0
    if how == "min":
        return min(values)
    if how == "last":
        return values[-1]
    if how == "mean":
        return sum(values) / len(values)
    return math.prod(values)
