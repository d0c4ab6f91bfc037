"""TensorRT-LLM Scaffolding style generator controllers, on the trio/anyio runtime."""

from __future__ import annotations

import copy
import enum
import math
from collections.abc import Generator, Mapping, Sequence
from typing import Any

from .._chat import ChatTask, ToolMessage
from .._context import RequestContext
from .._controller import drive_generator
from .._errors import InvalidTaskError
from .._mcp import MCPCallTask, MCPListTask, openai_tools
from .._tasks import GenerationTask, RewardTask, ScaffoldingOutput, Task, _deepcopy_lists
from ._math import get_digit_majority_vote_result

__all__ = [
    "BestOfNController",
    "ChatWithMCPController",
    "Controller",
    "MajorityVoteController",
    "NativeChatController",
    "NativeGenerationController",
    "NativeRewardController",
    "PRMController",
    "ParallelProcess",
]

TaskGen = Generator[Any, Any, Any]


class Controller:
    """Base of generator controllers.

    ``process(tasks, **kwargs)`` is a generator that yields lists of tasks (run
    concurrently by the runtime) or a :class:`ParallelProcess`; when the yield
    returns, the tasks' outputs are filled.  ``generate(prompt)`` wraps it for one
    prompt.  The runtime clones the prototype controller for every request.

    A generator controller can also be used inside a native controller:
    ``await controller.run(ctx, task)``.
    """

    def __init__(self) -> None:
        self.task_collections: dict[str, Any] = {}

    def clone(self) -> Controller:
        return copy.deepcopy(self)

    def generate(self, prompt: Any, **kwargs: Any) -> Generator[Any, Any, ScaffoldingOutput]:
        task = GenerationTask.create_from_prompt(prompt)
        yield from self.process([task], **kwargs)
        return task.create_scaffolding_output()

    def process(self, tasks: list[Task], **kwargs: Any) -> TaskGen:
        raise NotImplementedError(f"{type(self).__name__}.process is not implemented")

    async def run(
        self, ctx: RequestContext, task: GenerationTask, /, **kwargs: Any
    ) -> GenerationTask:
        await drive_generator(ctx, self.clone().process([task], **kwargs))
        return task


class ParallelProcess:
    """Run sub-controllers concurrently: ``controllers[i].process(tasks_list[i],
    **kwargs_list[i])`` for every ``i``."""

    def __init__(
        self,
        controllers: Sequence[Controller],
        tasks_list: Sequence[list[Task]],
        kwargs_list: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        if kwargs_list is None:
            kwargs_list = [{} for _ in controllers]
        if not (len(controllers) == len(tasks_list) == len(kwargs_list)):
            raise ValueError(
                "ParallelProcess needs as many task lists and kwargs as controllers, got "
                f"{len(controllers)}, {len(tasks_list)} and {len(kwargs_list)}"
            )
        self.sub_gens: list[TaskGen] = [
            c.process(t, **k) for c, t, k in zip(controllers, tasks_list, kwargs_list, strict=True)
        ]


_SAMPLING_KEYS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "seed",
    "num_logprobs",
)


class NativeGenerationController(Controller):
    """Send each task to the generation worker, filling unset sampling parameters
    from ``sampling_params``.

    Unknown or invalid sampling parameters raise :class:`InvalidTaskError` here
    (TensorRT-LLM only logs a warning and drops them).
    """

    class WorkerTag(enum.Enum):
        GENERATION = "generation"

    def __init__(
        self,
        sampling_params: Mapping[str, Any] | None = None,
        custom_sampling_params: Mapping[str, Any] | None = None,
        streaming: bool = False,
    ) -> None:
        super().__init__()
        params = dict(sampling_params or {})
        params.update(custom_sampling_params or {})
        probe = GenerationTask(input_str="x")
        for key, value in params.items():
            if key not in _SAMPLING_KEYS:
                raise InvalidTaskError(
                    f"sampling_params.{key}",
                    f"unknown sampling parameter; known: {list(_SAMPLING_KEYS)}",
                )
            setattr(probe, key, value)  # validates, naming the field
        self.sampling_params = params
        self.streaming = streaming

    def clone(self) -> Controller:
        """A copy per sample, as TensorRT-LLM's deep copy makes, without walking
        the object graph: the state is known here (plain sampling values, a
        stop list, task collections).  A subclass may hold more: it is deep
        copied."""
        if type(self) is not NativeGenerationController or self.task_collections:
            return super().clone()
        new = NativeGenerationController.__new__(NativeGenerationController)
        new.__dict__.update(self.__dict__)  # what copy.copy does, without its protocol
        new.task_collections = {}
        new.sampling_params = {
            k: list(v) if isinstance(v, list) else v for k, v in self.sampling_params.items()
        }
        return new

    def process(self, tasks: list[Task], **kwargs: Any) -> TaskGen:
        for task in tasks:
            task.worker_tag = self.WorkerTag.GENERATION
            for key, value in self.sampling_params.items():
                if getattr(task, key, None) in (None, []):
                    setattr(task, key, value)
            if self.streaming:  # the result streams the task's partial outputs
                task.streaming_output_flag = True
        yield tasks


class NativeChatController(NativeGenerationController):
    """A :class:`NativeGenerationController` for chats: ``generate(prompt)``
    builds a :class:`ChatTask` (a string becomes the user's message; a list of
    OpenAI messages is kept), and the generation worker appends the assistant's
    reply to the task's ``messages``."""

    def generate(self, prompt: Any, **kwargs: Any) -> Generator[Any, Any, ScaffoldingOutput]:
        task = ChatTask.create_from_prompt(prompt)
        yield from self.process([task], **kwargs)
        return task.create_scaffolding_output()


class ChatWithMCPController(Controller):
    """A chat that runs the model's tool calls on MCP servers (TensorRT-LLM
    compatible): each turn the model sees the tools (listed from the MCP worker
    unless ``tools`` is given); the tool calls it writes run as
    :class:`MCPCallTask` (concurrently), their results come back as
    :class:`ToolMessage` s, and the loop ends when a turn calls no tool (its text
    is the answer) or after ``max_iterations`` turns.

    A call the MCP worker refuses (unknown tool, arguments failing the tool's
    schema) is answered to the model as an error result rather than failing the
    request: it is the model's mistake to correct.
    """

    class WorkerTag(enum.Enum):
        GENERATION = "generation"
        MCP = "mcp"
        TOOLCALL = "mcp"  # TensorRT-LLM's later name of the MCP worker's tag

    def __init__(
        self,
        sampling_params: Mapping[str, Any] | None = None,
        system_prompts: Sequence[Any] | None = None,
        tools: Sequence[Any] | None = None,
        max_iterations: int = 8,
        *,
        generation_controller: NativeGenerationController | None = None,
    ) -> None:
        super().__init__()
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        if generation_controller is not None and sampling_params is None:
            sampling_params = generation_controller.sampling_params
        self.generation = NativeGenerationController(sampling_params)
        self.generation_controller = generation_controller or self.generation
        self.system_prompts = list(system_prompts or ())
        # the caller's own list (TensorRT-LLM keeps the object it was given)
        self.tools = tools
        self.max_iterations = max_iterations

    def generate(self, prompt: Any, **kwargs: Any) -> Generator[Any, Any, ScaffoldingOutput]:
        task = ChatTask.create_from_prompt(prompt, self.system_prompts)
        yield from self.process([task], **kwargs)
        return task.create_scaffolding_output()

    def process(self, tasks: list[Task], **kwargs: Any) -> TaskGen:
        first = tasks[0]
        if isinstance(first, ChatTask):
            chat = first
        else:
            prompt: Any = first.input_str if isinstance(first, GenerationTask) else None
            if prompt is None and isinstance(first, GenerationTask) and first.messages:
                prompt = first.messages
            chat = ChatTask.create_from_prompt(prompt, self.system_prompts)
        tools = self.tools
        if tools is None:
            listing = MCPListTask(worker_tag=self.WorkerTag.MCP)
            yield [listing]
            tools = openai_tools(listing.result_tools)
        chat.tools = tools
        for _ in range(self.max_iterations):
            yield from self.generation.process([chat])
            calls = chat.tool_calls or []
            if not calls:
                break
            runs = [
                MCPCallTask(
                    worker_tag=self.WorkerTag.MCP,
                    tool_name=c.function.name,
                    args=c.function.arguments,
                    tool_call_id=c.id,
                )
                for c in calls
            ]
            try:
                yield runs
            except InvalidTaskError:
                for run in runs:  # one of them was refused: run each on its own
                    try:
                        yield [run]
                    except InvalidTaskError as e:
                        run.result_str, run.is_error = f"error: {e}", True
            for run in runs:
                chat.add_message(ToolMessage(run.result_str, tool_call_id=run.tool_call_id))
        if chat is not first and isinstance(first, GenerationTask):
            first.output_str = chat.output_str
            first.output_tokens = chat.output_tokens
            first.finish_reason = chat.finish_reason
            first.customized_result_fields["messages"] = chat.messages_to_dict_content()


class NativeRewardController(Controller):
    """Score generation tasks' outputs with the reward worker; scores land in
    ``self.scores`` (one per task)."""

    class WorkerTag(enum.Enum):
        REWARD = "reward"

    def __init__(self) -> None:
        super().__init__()
        self.scores: list[float] | None = None

    def process(self, tasks: list[Task], **kwargs: Any) -> TaskGen:
        gen_tasks = [t for t in tasks if isinstance(t, GenerationTask)]
        if not gen_tasks:
            raise ValueError("NativeRewardController needs generation tasks to score")
        first = gen_tasks[0]
        prompt = first.input_str
        if prompt is None and first.messages:
            prompt = first.messages[-1]["content"]
        reward = RewardTask(
            worker_tag=self.WorkerTag.REWARD,
            input_str=prompt,
            candidates=[t.output_str or "" for t in gen_tasks],
        )
        yield [reward]
        self.scores = reward.scores


class PRMController(NativeRewardController):
    """Score outputs with a process reward model (TensorRT-LLM compatible): each
    output is split into steps on ``step_token``, every step is scored, and the
    output's score is the product of its step scores (``split_steps=False``: the
    reward worker's score of the whole output).  Scores land in ``self.scores``.

    The reward worker (``RewardWorker(kind="process")``) owns its tokenizer and
    its step tag, so ``tokenizer`` and ``separate_token`` are accepted for
    compatibility and not used.  A worker that returns no step scores for a
    split output fails the request (no score is invented).
    """

    def __init__(
        self,
        tokenizer: Any = None,
        split_steps: bool = True,
        step_token: str = "\n\n",
        separate_token: str = "<extra_0>",
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.split_steps = split_steps
        self.step_token = step_token
        self.separate_token = separate_token

    def process(self, tasks: list[Task], **kwargs: Any) -> TaskGen:
        gen_tasks = [t for t in tasks if isinstance(t, GenerationTask)]
        if not gen_tasks:
            raise ValueError("PRMController needs generation tasks to score")
        rewards = [
            RewardTask(
                worker_tag=self.WorkerTag.REWARD,
                input_str=_question(t),
                candidates=[t.output_str or ""],
                step_separator=self.step_token if self.split_steps else None,
            )
            for t in gen_tasks
        ]
        yield rewards
        scores = []
        for r in rewards:
            if not self.split_steps:
                scores.append(float((r.scores or [math.nan])[0]))
                continue
            if not r.step_scores or not r.step_scores[0]:
                raise ValueError(
                    "the reward worker returned no step scores (use RewardWorker(kind='process'))"
                )
            scores.append(math.prod(r.step_scores[0]))
        self.scores = scores


def _question(task: GenerationTask) -> str | None:
    if task.input_str is not None or not task.messages:
        return task.input_str
    return str(task.messages[-1].get("content"))


class MajorityVoteController(Controller):
    """Sample ``sample_num`` times with ``generation_controller`` and keep the
    majority answer."""

    def __init__(self, generation_controller: Controller, default_sample_num: int = 1) -> None:
        super().__init__()
        self.generation_controller = generation_controller
        self.default_sample_num = default_sample_num

    def clone(self) -> MajorityVoteController:
        # type(self): a subclass (or a class decorated with task collections) stays itself
        return type(self)(self.generation_controller.clone(), self.default_sample_num)

    def process(
        self,
        tasks: list[Task],
        sample_num: int = 1,
        generation_kwargs: Mapping[str, Any] | None = None,
        majority_vote_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> TaskGen:
        sample_num = max(sample_num, self.default_sample_num)
        controllers = [self.generation_controller.clone() for _ in range(sample_num)]
        tasks_list = _deepcopy_lists(tasks, sample_num)  # copy.deepcopy(tasks) each
        kwargs_list = [dict(generation_kwargs or {}) for _ in range(sample_num)]
        yield ParallelProcess(controllers, tasks_list, kwargs_list)
        candidates = [getattr(ts[0], "output_str", None) or "" for ts in tasks_list]
        result = self.majority_vote(candidates, **(majority_vote_kwargs or {}))
        setattr(tasks[0], "output_str", result)  # noqa: B010 - any task with output_str

    def majority_vote(self, candidates: list[str], **kwargs: Any) -> str:
        """The first candidate with the most common boxed integer answer (the
        first candidate when none has one), as TensorRT-LLM's."""
        if not candidates:
            return ""
        index, _ = get_digit_majority_vote_result(candidates)
        return candidates[index]


class BestOfNController(Controller):
    """Sample ``sample_num`` candidates and keep the one the reward model scores
    highest."""

    def __init__(
        self,
        generation_controller: Controller,
        reward_controller: Controller,
        default_sample_num: int = 4,
    ) -> None:
        super().__init__()
        self.generation_controller = generation_controller
        self.reward_controller = reward_controller
        self.default_sample_num = default_sample_num

    def clone(self) -> BestOfNController:
        return type(self)(
            self.generation_controller.clone(),
            self.reward_controller.clone(),
            self.default_sample_num,
        )

    def process(
        self,
        tasks: list[Task],
        sample_num: int = 4,
        generation_kwargs: Mapping[str, Any] | None = None,
        reward_kwargs: Mapping[str, Any] | None = None,
        select_best_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> TaskGen:
        if len(tasks) != 1:
            raise ValueError("BestOfNController handles exactly one task")
        task = tasks[0]
        sample_num = max(sample_num, self.default_sample_num)
        gen_tasks = [ts[0] for ts in _deepcopy_lists([task], sample_num)]
        yield ParallelProcess(
            [self.generation_controller.clone() for _ in range(sample_num)],
            [[t] for t in gen_tasks],
            [dict(generation_kwargs or {}) for _ in range(sample_num)],
        )
        yield from self.reward_controller.process(gen_tasks, **(reward_kwargs or {}))
        scores = getattr(self.reward_controller, "scores", None)
        if scores is None or len(scores) != len(gen_tasks):
            raise RuntimeError("the reward controller produced no score for each candidate")
        best, _ = self.select_best(gen_tasks, scores, **(select_best_kwargs or {}))
        setattr(task, "output_str", getattr(best, "output_str", None))  # noqa: B010

    def select_best(
        self, tasks: list[Task], reward_values: Sequence[float], **kwargs: Any
    ) -> tuple[Task, int]:
        index = max(range(len(reward_values)), key=lambda i: reward_values[i])
        return tasks[index], index
