"""Token and trace confidence, and the confidence-aware votes, of TensorRT-LLM's
DeepConf contrib project."""

from __future__ import annotations

import collections
import dataclasses
import math
import random
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ...._tasks import Task
from ..._math import extract_answer_from_boxed

__all__ = ["VOTE_POLICIES", "ConfidenceInfo", "majority_vote", "token_logprobs"]

#: how a vote may use the traces' confidence (TensorRT-LLM's names): ``majority``
#: ignores it; ``*_weighted`` sums a statistic per answer; ``top10_*_filtered``
#: keeps the most confident tenth of the traces, then sums the statistic
VOTE_POLICIES: dict[str, tuple[str | None, float]] = {
    "majority": (None, 1.0),
    "mean_confidence_weighted": ("mean_conf", 1.0),
    "tail_confidence_weighted": ("tail_mean_conf", 1.0),
    "bottom_window_weighted": ("bottom_window_mean_conf", 1.0),
    "min_window_weighted": ("min_window_conf", 1.0),
    "top10_tail_filtered": ("tail_mean_conf", 0.1),
    "top10_bottom_window_filtered": ("bottom_window_mean_conf", 0.1),
}


def check_vote_policy(vote_policy: str) -> None:
    """Raise :class:`NotImplementedError` (TensorRT-LLM's type, at construction
    rather than at the first vote) for a policy it does not have."""
    if vote_policy not in VOTE_POLICIES:
        raise NotImplementedError(
            f"Vote policy {vote_policy!r} is not implemented; choose one of {list(VOTE_POLICIES)}"
        )


def _value(entry: Any) -> float:
    """A logprob from one alternative: a ``Logprob`` (``.logprob``), a number,
    or a ``(token, logprob)`` pair."""
    if isinstance(entry, tuple) and len(entry) == 2 and not hasattr(entry, "logprob"):
        return float(entry[1])
    lp = getattr(entry, "logprob", entry)
    return float(lp)


def token_logprobs(task: Any) -> list[list[float]]:
    """Per output token of ``task``, the logprobs of its alternatives as the
    worker reported them: TensorRT-LLM's ``logprobs`` (one ``{token_id:
    Logprob}`` per token), else the engine's ``top_logprobs`` (``(token,
    logprob)`` pairs), else the sampled token's logprob alone.  Raises
    :class:`ValueError` when the worker reported none for a task that has
    output (ask for them with ``num_logprobs``)."""
    logprobs = task.logprobs
    if logprobs and isinstance(logprobs[0], Mapping):
        return [[_value(v) for v in d.values()] for d in logprobs]
    top = getattr(task, "top_logprobs", None)
    if top:
        return [[_value(pair) for pair in alts] for alts in top]
    if logprobs:
        return [[float(v)] for v in logprobs]
    if task.output_tokens or task.output_str:
        raise ValueError(
            "DeepConf needs the generation's logprobs, and the worker returned none "
            "(set num_logprobs in the generation controller's sampling_params)"
        )
    return []


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


@dataclasses.dataclass
class ConfidenceInfo:
    """One trace's confidence, token by token.

    A token's confidence is minus the mean logprob of its alternatives, rounded
    to 3 decimals (a peaked distribution: high).  ``conf_group_list`` holds the
    last ``conf_group_size`` of them and ``conf_grouped`` their sum; each time
    that window is full its mean joins ``avg_conf_group_list``.  The trace
    should stop (:meth:`should_stop`) once the latest full window's mean is
    below ``conf_threshold``.
    """

    conf_grouped: float = 0.0
    conf_group_size: int = 128
    conf_threshold: float = 0.0
    conf_list: list[float] = dataclasses.field(default_factory=list)
    conf_group_list: collections.deque[float] = dataclasses.field(default_factory=collections.deque)
    avg_conf_group_list: list[float] = dataclasses.field(default_factory=list)

    def update_confidence_info(self, token_dict: Any, token_id: int | None = None) -> None:
        """Add one token: ``token_dict`` its alternatives (``{token_id:
        Logprob}``, ``(token, logprob)`` pairs or bare logprobs).  ``token_id``
        (the sampled token) is accepted for TensorRT-LLM's signature; the mean
        covers every alternative given."""
        values = token_dict.values() if isinstance(token_dict, Mapping) else token_dict
        lps = [_value(v) for v in values]
        if not lps:
            raise ValueError("a token with no logprobs has no confidence")
        self.add(round(-_mean(lps), 3))

    def add(self, confidence: float) -> None:
        """Add one token's confidence."""
        self.conf_list.append(confidence)
        self.conf_group_list.append(confidence)
        self.conf_grouped += confidence
        if len(self.conf_group_list) > self.conf_group_size:
            self.conf_grouped -= self.conf_group_list.popleft()
        if len(self.conf_group_list) == self.conf_group_size:
            self.avg_conf_group_list.append(self.conf_grouped / self.conf_group_size)

    def should_stop(self) -> bool:
        """Whether the latest full window's mean is below ``conf_threshold``
        (never before the first window is full)."""
        if len(self.conf_list) < self.conf_group_size or not self.avg_conf_group_list:
            return False
        return self.avg_conf_group_list[-1] < self.conf_threshold

    def get_min_conf_grouped(self) -> float:
        """The weakest full window's mean; ``conf_threshold`` (with a warning)
        when the trace never filled a window."""
        if not self.avg_conf_group_list:
            warnings.warn(
                f"a trace of {len(self.conf_list)} tokens filled no window of "
                f"{self.conf_group_size}; its threshold is kept (lower conf_group_size)",
                stacklevel=2,
            )
            return self.conf_threshold
        return min(self.avg_conf_group_list)

    def get_statistics(self, tail_tokens: int = 2048, bottom_percent: float = 0.1) -> None:
        """Set ``mean_conf`` (all tokens), ``tail_mean_conf`` (the last
        ``tail_tokens``), ``bottom_window_mean_conf`` (the mean of the weakest
        ``bottom_percent`` of the windows, at least one) and
        ``min_window_conf`` (the weakest window).  A trace with no full window
        uses its mean for both window statistics; one with no token gets NaN."""
        self.mean_conf = _mean(self.conf_list)
        self.tail_mean_conf = _mean(self.conf_list[-tail_tokens:])
        windows = self.avg_conf_group_list
        if not windows:
            self.bottom_window_mean_conf = self.min_window_conf = self.mean_conf
            return
        k = max(1, int(len(windows) * bottom_percent))
        self.bottom_window_mean_conf = _mean(sorted(windows)[:k])
        self.min_window_conf = min(windows)


def _weighted(tasks: list[Any], answers: list[str], weights: list[float], keep: float) -> Any:
    if keep < 1.0:
        n = max(1, int(len(weights) * keep))
        order = sorted(range(len(weights)), key=weights.__getitem__, reverse=True)[:n]
        tasks = [tasks[i] for i in order]
        answers = [answers[i] for i in order]
        weights = [weights[i] for i in order]
    totals: dict[str, float] = {}
    for answer, weight in zip(answers, weights, strict=True):
        totals[answer] = totals.get(answer, 0.0) + weight
    winner = max(totals, key=totals.__getitem__)  # (the first seen among equals)
    return tasks[answers.index(winner)]


def majority_vote(tasks_list: Iterable[Sequence[Task]], vote_policy: str = "majority") -> Any:
    """The task that carries the voted answer, from the first task of each list.

    Each task gets ``customized_result_fields['extracted_answer']`` (its last
    boxed answer) and its ``confidence_info`` statistics; tasks with no answer
    do not vote.  When none has one, a random task is returned with a warning
    (TensorRT-LLM's behaviour: raise ``max_tokens``).  Raises
    :class:`NotImplementedError` for an unknown ``vote_policy``."""
    check_vote_policy(vote_policy)
    tasks: list[Any] = [next(iter(t)) for t in tasks_list]
    if not tasks:
        raise ValueError("majority_vote needs at least one task")
    for task in tasks:
        task.customized_result_fields["extracted_answer"] = extract_answer_from_boxed(
            task.output_str or ""
        )
        task.customized_result_fields["confidence_info"].get_statistics()
    voters = [t for t in tasks if t.customized_result_fields["extracted_answer"]]
    if not voters:
        warnings.warn(
            "no trace has a boxed answer (raise max_tokens); a random trace is returned",
            stacklevel=2,
        )
        return random.choice(tasks)
    answers = [t.customized_result_fields["extracted_answer"] for t in voters]
    statistic, keep = VOTE_POLICIES[vote_policy]
    if statistic is None:
        winner = collections.Counter(answers).most_common(1)[0][0]
        return voters[answers.index(winner)]
    weights = [
        float(getattr(t.customized_result_fields["confidence_info"], statistic)) for t in voters
    ]
    return _weighted(voters, answers, weights, keep)
