"""A reward worker that needs no second model: the generation model judges."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import anyio

from engine_bridge import ChatMessage, Engine, EngineRequest, InvalidRequestError, SamplingParams

from ._errors import InvalidTaskError
from ._task_context import task_context
from ._tasks import RewardTask, Task
from ._worker import Handler, Worker

__all__ = ["SelfVerifier"]

OUTCOME_PROMPT = (
    "{question}\n\nProposed solution:\n{candidate}\n\n"
    "Is the proposed solution correct? Answer Yes or No."
)
PROCESS_PROMPT = (
    "{question}\n\nA solution in progress (its steps so far):\n{candidate}\n\n"
    "Are the steps so far correct? Answer Yes or No."
)

#: the most characters of one verdict looked at (the verdict is one token long;
#: a bound, so no model output is ever scanned unbounded)
_VERDICT_CHARS = 64


def says_yes(text: str) -> bool:
    """Whether a verdict begins with "yes" (any case, leading spaces and
    punctuation ignored)."""
    head = text[:_VERDICT_CHARS].lstrip(" \t\n\"'*`([").lower()
    return head.startswith("yes")


class SelfVerifier(Worker):
    """Scores :class:`RewardTask` candidates with the generation model itself:
    the model is asked whether the candidate (or, for a process reward, the
    steps so far) is correct, and the score is the probability that its verdict
    starts with "Yes".

    For each candidate, ``samples`` one-token verdicts are drawn at
    ``temperature`` with their log probabilities.  The score is the probability
    mass, as the engine reports it, of the distinct first tokens drawn that begin
    a Yes (``" Yes"`` and ``"Yes"`` are two tokens; each counts once however often
    it is drawn).  That is the exact probability of the Yes tokens the samples
    saw: a Yes token no sample drew is missing from it, so it is a lower bound of
    P(Yes), tight once Yes has been drawn at all.  An engine that returns no log
    probabilities (a server that ignores ``logprobs``) gets the fraction of
    verdicts that say Yes instead.  Nothing is estimated where the engine gave no
    figure.

    A task with ``step_separator`` set (a tree search's partial solution) is asked
    with ``process_prompt``, else with ``outcome_prompt``; both are formatted with
    ``{question}`` and ``{candidate}`` and sent as one user chat turn.  Only
    ``scores`` is set (``step_scores`` stays ``None``: the verdict is on the whole
    candidate).  The verdict tokens count in the request's usage and in every
    token budget over the task (``prompt_tokens_num`` and
    ``completion_tokens_num`` of the task).

    This is much weaker than a trained reward model: a small model's verdict is
    close to chance (docs/methods.md gives the figure for the embedded model and
    the command that measures it).  Pass a :class:`RewardWorker` for a trained
    outcome or process reward model instead.

    The engine is shared with the generation worker and is **not** started here:
    pass the engine an :class:`EngineWorker` manages.

    Cancellation: cancelling the task aborts its verdict requests in the engine
    (each is an ``open_stream`` under the task's cancel scope).  An engine error on
    any verdict fails the task with it.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        samples: int = 4,
        temperature: float = 1.0,
        outcome_prompt: str = OUTCOME_PROMPT,
        process_prompt: str = PROCESS_PROMPT,
        max_concurrency: int | None = None,
    ) -> None:
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise ValueError(f"samples must be an int >= 1, got {samples!r}")
        if not isinstance(temperature, int | float) or not temperature > 0:
            raise ValueError(f"temperature must be > 0 (verdicts are sampled), got {temperature!r}")
        for name, prompt in (
            ("outcome_prompt", outcome_prompt),
            ("process_prompt", process_prompt),
        ):
            if "{question}" not in prompt or "{candidate}" not in prompt:
                raise ValueError(f"{name} must contain {{question}} and {{candidate}}")
        self.engine = engine
        self.samples = samples
        self.temperature = float(temperature)
        self.outcome_prompt = outcome_prompt
        self.process_prompt = process_prompt
        self._params = SamplingParams(max_tokens=1, temperature=self.temperature, num_logprobs=0)
        if max_concurrency is not None:
            self.max_concurrency = max_concurrency

    def __repr__(self) -> str:
        return f"SelfVerifier({self.engine!r}, samples={self.samples})"

    @property
    def healthy(self) -> bool:
        return self.engine.healthy

    def stats(self) -> Mapping[str, int]:
        return {}  # the engine's requests are counted by the worker that manages it

    def _request(self, task: RewardTask, candidate: str) -> EngineRequest:
        template = self.process_prompt if task.step_separator is not None else self.outcome_prompt
        text = template.replace("{question}", task.input_str or "").replace(
            "{candidate}", candidate
        )
        return EngineRequest(self._params, messages=(ChatMessage("user", text),), stream=False)

    def check_task(self, task: Task) -> None:
        super().check_task(task)
        if isinstance(task, RewardTask):
            for candidate in task.candidates:
                try:
                    self.engine.check(self._request(task, candidate))
                except InvalidRequestError as e:
                    raise InvalidTaskError.of(type(task).__name__, e) from None

    async def _score(self, task: RewardTask, candidate: str) -> tuple[float, int, int]:
        """(score, prompt tokens, completion tokens) of one candidate."""
        request = self._request(task, candidate)
        drawn: list[tuple[str, int | None, float | None]] = []
        used = [0, 0]

        async def verdict() -> None:
            text, first, lp = "", None, None
            async with self.engine.open_stream(request) as deltas:
                async for d in deltas:
                    if first is None and d.token_ids:
                        first = d.token_ids[0]
                    if lp is None and d.logprobs:
                        lp = d.logprobs[0]
                    if len(text) < _VERDICT_CHARS:
                        text += d.text
                    used[0] = d.prompt_tokens or used[0]
                    used[1] += d.num_tokens
                    task_context().report_tokens(d.num_tokens)
            drawn.append((text, first, lp))

        async with anyio.create_task_group() as tg:
            for _ in range(self.samples):
                tg.start_soon(verdict)
        prompt_tokens = used[0] * self.samples
        if all(lp is not None for _, _, lp in drawn):
            mass: dict[object, float] = {}
            for text, first, lp in drawn:
                if says_yes(text):
                    assert lp is not None
                    mass[first if first is not None else text] = math.exp(lp)
            return min(1.0, sum(mass.values())), prompt_tokens, used[1]
        return sum(says_yes(t) for t, _, _ in drawn) / len(drawn), prompt_tokens, used[1]

    async def reward_handler(self, task: RewardTask) -> None:
        results: list[tuple[float, int, int]] = [(0.0, 0, 0)] * len(task.candidates)

        async def one(i: int, candidate: str) -> None:
            results[i] = await self._score(task, candidate)

        async with anyio.create_task_group() as tg:
            for i, c in enumerate(task.candidates):
                tg.start_soon(one, i, c)
        task.scores = [s for s, _, _ in results]
        task.step_scores = None
        task.prompt_tokens_num = sum(p for _, p, _ in results)
        task.completion_tokens_num = sum(c for _, _, c in results)

    task_handlers: ClassVar[dict[type[Task], Handler]] = {RewardTask: reward_handler}
