"""TensorRT-LLM's DeepConf contrib controllers."""

from __future__ import annotations

import copy
from typing import Any

from ...._tasks import StreamGenerationTask, Task
from ....methods._deepconf import _percentile
from ..._controllers import Controller, ParallelProcess, TaskGen
from ._confidence import ConfidenceInfo, check_vote_policy, majority_vote, token_logprobs

__all__ = [
    "DeepConfOfflineController",
    "DeepConfOfflineMajorityVoteController",
    "DeepConfOnlineController",
    "DeepConfOnlineMajorityVoteController",
]


def _one(tasks: list[Task], name: str) -> Any:
    if len(tasks) != 1:
        raise ValueError(f"{name} takes one task per request, got {len(tasks)}")
    return tasks[0]


def _check_window(conf_group_size: int) -> None:
    if not isinstance(conf_group_size, int) or conf_group_size < 1:
        raise ValueError(f"conf_group_size must be an integer >= 1, got {conf_group_size!r}")


class DeepConfOfflineController(Controller):
    """Run ``generation_controller`` on the task to its end, then measure the
    trace's confidence (:class:`ConfidenceInfo` over windows of
    ``conf_group_size`` tokens) into ``customized_result_fields['confidence_info']``.
    Raises :class:`ValueError` at construction for ``conf_group_size < 1``, and
    from the request when the worker returned no logprobs."""

    def __init__(
        self,
        generation_controller: Controller,
        conf_group_size: int,
        conf_threshold: float,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        _check_window(conf_group_size)
        self.generation_controller = generation_controller
        self.conf_group_size = conf_group_size
        self.conf_threshold = conf_threshold
        self.confidence_info = ConfidenceInfo(
            conf_group_size=conf_group_size, conf_threshold=conf_threshold
        )

    def clone(self) -> DeepConfOfflineController:
        return type(self)(
            generation_controller=self.generation_controller.clone(),
            conf_group_size=self.conf_group_size,
            conf_threshold=self.confidence_info.conf_threshold,
        )

    def process(self, tasks: list[Task], **kwargs: Any) -> TaskGen:
        task = _one(tasks, type(self).__name__)
        yield from self.generation_controller.process(tasks, **kwargs)
        for alternatives in token_logprobs(task):
            self.confidence_info.update_confidence_info(alternatives)
        task.customized_result_fields["confidence_info"] = self.confidence_info


class DeepConfOnlineController(Controller):
    """Stream the generation in steps of ``conf_group_size`` tokens through
    ``generation_controller``; after each step, measure the new tokens, and once
    the latest window's mean confidence falls below ``conf_threshold`` cancel
    the generation in the engine (``cancel_flag``) and keep what it wrote.  The
    trace's :class:`ConfidenceInfo` (every token delivered measured, the last
    step's included, which TensorRT-LLM's leaves out) lands in
    ``customized_result_fields['confidence_info']``.

    Cancellation: cancelling the request cancels the stream in the engine, as
    any stream of a generator controller."""

    def __init__(
        self,
        generation_controller: Controller,
        conf_group_size: int,
        conf_threshold: float,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        _check_window(conf_group_size)
        self.generation_controller = generation_controller
        self.conf_group_size = conf_group_size
        self.conf_threshold = conf_threshold
        self.confidence_info = ConfidenceInfo(
            conf_group_size=conf_group_size, conf_threshold=conf_threshold
        )

    def clone(self) -> DeepConfOnlineController:
        return type(self)(
            generation_controller=self.generation_controller.clone(),
            conf_group_size=self.conf_group_size,
            conf_threshold=self.confidence_info.conf_threshold,
        )

    def process(self, tasks: list[Task], **kwargs: Any) -> TaskGen:
        task = _one(tasks, type(self).__name__)
        stream = StreamGenerationTask.create_from_generation_task(
            task, streaming_step=self.confidence_info.conf_group_size
        )
        measured = 0
        while True:
            per_token = token_logprobs(stream)
            for alternatives in per_token[measured:]:
                self.confidence_info.update_confidence_info(alternatives)
                measured += 1
                if not stream.end_flag and self.confidence_info.should_stop():
                    stream.cancel_flag = True
                    break
            if stream.end_flag:  # (the last step's tokens measured too)
                break
            measured = len(per_token)
            yield from self.generation_controller.process([stream], **kwargs)
        task.result = stream.result
        for name in ("output_tokens", "logprobs", "top_logprobs", "finish_reason"):
            if hasattr(stream, name):
                setattr(task, name, getattr(stream, name))
        task.customized_result_fields["confidence_info"] = self.confidence_info


def _parallel(
    tasks: list[Task], count: int, controller: Controller, threshold: float | None, kwargs: Any
) -> TaskGen:
    """``count`` clones of ``controller`` on copies of ``tasks`` at once (each
    clone's threshold set to ``threshold`` when given); returns the copies."""
    if count == 0:
        return []
    controllers = [controller.clone() for _ in range(count)]
    if threshold is not None:
        for c in controllers:
            c.confidence_info.conf_threshold = threshold  # type: ignore[attr-defined]
    copies = [copy.deepcopy(tasks) for _ in range(count)]
    yield ParallelProcess(controllers, copies, [copy.deepcopy(kwargs) for _ in range(count)])
    return copies


class DeepConfOfflineMajorityVoteController(Controller):
    """``sample_num`` traces of ``generation_controller`` (a
    :class:`DeepConfOfflineController`) at once, then the answer of
    :func:`majority_vote` under ``vote_policy`` becomes the task's result.
    Raises :class:`NotImplementedError` at construction for an unknown policy,
    :class:`ValueError` for ``sample_num < 1``."""

    def __init__(
        self,
        generation_controller: Controller,
        sample_num: int,
        vote_policy: str = "majority",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        check_vote_policy(vote_policy)
        if sample_num < 1:
            raise ValueError(f"sample_num must be >= 1, got {sample_num}")
        self.generation_controller = generation_controller
        self.sample_num = sample_num
        self.vote_policy = vote_policy

    def clone(self) -> DeepConfOfflineMajorityVoteController:
        return type(self)(
            generation_controller=self.generation_controller.clone(),
            sample_num=self.sample_num,
            vote_policy=self.vote_policy,
        )

    def process(self, tasks: list[Task], **kwargs: Any) -> TaskGen:
        task = _one(tasks, type(self).__name__)
        traces = yield from _parallel(
            tasks, self.sample_num, self.generation_controller, None, kwargs
        )
        task.result = majority_vote(traces, vote_policy=self.vote_policy).result


class DeepConfOnlineMajorityVoteController(Controller):
    """DeepConf online: ``warmup_sample_num`` full traces of
    ``warmup_generation_controller``; the threshold of the remaining
    ``sample_num - warmup_sample_num`` traces of ``final_generation_controller``
    (a :class:`DeepConfOnlineController`) is the ``100 -
    confidence_percentile``-th percentile of the warm-up traces' weakest
    windows (``confidence_percentile=90`` keeps about the best 90%: DeepConf-high;
    ``10``: DeepConf-low); then every trace votes (:func:`majority_vote`).
    Raises at construction: :class:`ValueError` when ``sample_num <
    warmup_sample_num``, :class:`NotImplementedError` for an unknown policy."""

    def __init__(
        self,
        warmup_generation_controller: Controller,
        final_generation_controller: Controller,
        sample_num: int,
        vote_policy: str = "majority",
        warmup_sample_num: int = 5,
        confidence_percentile: int = 90,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        check_vote_policy(vote_policy)
        if warmup_sample_num < 0 or sample_num < warmup_sample_num:
            raise ValueError(
                f"sample_num={sample_num} must be at least warmup_sample_num={warmup_sample_num} (>= 0)"
            )
        if not 0 <= confidence_percentile <= 100:
            raise ValueError(f"confidence_percentile must be in [0, 100], got {confidence_percentile}")
        self.warmup_generation_controller = warmup_generation_controller
        self.final_generation_controller = final_generation_controller
        self.sample_num = sample_num
        self.warmup_sample_num = warmup_sample_num
        self.final_sample_num = sample_num - warmup_sample_num
        self.confidence_percentile = confidence_percentile
        self.vote_policy = vote_policy

    def clone(self) -> DeepConfOnlineMajorityVoteController:
        return type(self)(
            warmup_generation_controller=self.warmup_generation_controller.clone(),
            final_generation_controller=self.final_generation_controller.clone(),
            sample_num=self.sample_num,
            vote_policy=self.vote_policy,
            warmup_sample_num=self.warmup_sample_num,
            confidence_percentile=self.confidence_percentile,
        )

    def get_conf_bar(self, tasks_list: list[list[Task]]) -> float:
        """The online threshold from the warm-up traces (the final controller's
        own threshold when there were none)."""
        firsts: list[Any] = [t[0] for t in tasks_list]
        weakest = [
            t.customized_result_fields["confidence_info"].get_min_conf_grouped() for t in firsts
        ]
        if not weakest:
            return float(self.final_generation_controller.conf_threshold)  # type: ignore[attr-defined]
        return _percentile(weakest, 100 - self.confidence_percentile)

    def process(self, tasks: list[Task], **kwargs: Any) -> TaskGen:
        task = _one(tasks, type(self).__name__)
        warmup = yield from _parallel(
            tasks, self.warmup_sample_num, self.warmup_generation_controller, None, kwargs
        )
        bar = self.get_conf_bar(warmup)
        final = yield from _parallel(
            tasks, self.final_sample_num, self.final_generation_controller, bar, kwargs
        )
        task.result = majority_vote(warmup + final, vote_policy=self.vote_policy).result
