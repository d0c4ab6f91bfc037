"""Tasks: the units of work a controller asks workers for.

Tasks are mutable attrs classes: a controller fills the inputs, a worker fills the
outputs.  Field values are validated whenever they are set, and
:meth:`Task.validate` checks the whole task when it is submitted, so bad input is
rejected with a message naming the field before anything runs.

Tasks deliberately keep a ``__dict__`` (no slots): controllers ported from
TensorRT-LLM attach ad-hoc attributes to tasks, and that must keep working.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import attrs

from engine_bridge import (
    EngineRequest,
    InvalidRequestError,
    SamplingParams,
    check_sampling_field,
)

from ._errors import InvalidTaskError

__all__ = [
    "GenerationTask",
    "RewardTask",
    "ScaffoldingOutput",
    "StreamGenerationTask",
    "Task",
    "TaskStatus",
    "ToolCallTask",
    "normalize_tag",
]


class TaskStatus(enum.Enum):
    """What a handler reports (TensorRT-LLM compatible names).

    Handlers may also return ``None`` for success; any failure should preferably be
    raised as an exception, which reaches the request unchanged.
    """

    SUCCESS = "success"
    WORKER_NOT_SUPPORTED = "worker_not_supported"
    WORKER_EXECEPTION = "worker_exception"  # (sic) the TensorRT-LLM spelling


def normalize_tag(tag: object) -> object:
    """Worker tags may be strings or enum members; ``Enum.X`` and its value match."""
    if isinstance(tag, enum.Enum):
        return tag.value
    return tag


@attrs.frozen(slots=True)
class ScaffoldingOutput:
    """The user-facing output of a request (or a partial snapshot while streaming).

    ``details`` carries method-specific information (votes, scores, ...).
    """

    output_str: str | None
    output_tokens: Sequence[int] | None = None
    finish_reason: str | None = None
    finished: bool = True
    details: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def text(self) -> str:
        return self.output_str or ""


def _sampling_validator(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """attrs validator: check one sampling field, naming it in the error."""
    if value is None:
        return
    try:
        check_sampling_field(attribute.name, value)
    except InvalidRequestError as e:
        raise InvalidTaskError.of(type(inst).__name__, e) from None


_T = TypeVar("_T", bound=type)


def _setattr_hooks(cls: _T) -> _T:
    """Replace the ``__setattr__`` attrs writes for an ``attrs.define`` task class
    (which runs a pipe of two setters for every field, validator or not) by one
    doing the same: the field's converter, then its validator (unless
    ``attrs.validators.set_disabled(True)``), only for fields that have one.
    About half the cost of an assignment, which handlers and controllers make
    several times per task.  A subclass built with ``attrs.define`` gets attrs'
    own again (over all its fields, inherited ones included)."""
    hooks: dict[str, tuple[attrs.Attribute[Any], Any, Any]] = {}
    for field in attrs.fields(cls):
        if field.on_setattr is not None:  # (the class's convert-then-validate applies)
            raise TypeError(f"{cls.__name__}.{field.name}: a custom on_setattr is not supported")
        if field.converter is not None or field.validator is not None:
            hooks[field.name] = (field, field.converter, field.validator)
    setattr_ = object.__setattr__
    convert = attrs.setters.convert

    def __setattr__(self: Any, name: str, value: Any) -> None:
        hook = hooks.get(name)
        if hook is not None:
            field, converter, validator = hook
            if converter is not None:
                value = convert(self, field, value)
            if validator is not None and attrs.validators.get_disabled() is False:
                validator(self, field, value)
        setattr_(self, name, value)

    __setattr__.__qualname__ = f"{cls.__qualname__}.__setattr__"
    cls.__setattr__ = __setattr__  # type: ignore[assignment]
    return cls


def _stop_converter(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


@_setattr_hooks
@attrs.define(slots=False, eq=False)
class Task:
    """Base of all tasks.  ``worker_tag`` names the worker role that runs it.

    ``streaming_output_flag`` (TensorRT-LLM compatible): the request's result
    streams this task's partial outputs while it generates (a generator
    controller yields it as one task, and ``async for`` / ``for`` over the
    result sees them); the worker also appends them to
    ``streaming_output_list``, which the runtime empties once they went out.
    """

    worker_tag: Any = None
    custom_input_params: dict[str, Any] | None = None
    custom_output_params: dict[str, Any] | None = None
    streaming_output_flag: bool = attrs.field(default=False, kw_only=True)
    streaming_output_list: list[Any] = attrs.field(factory=list, kw_only=True)

    #: input / output attribute names, used by traces and replay
    input_fields: ClassVar[tuple[str, ...]] = ("custom_input_params",)
    output_fields: ClassVar[tuple[str, ...]] = ("custom_output_params",)

    def validate(self) -> None:
        """Raise :class:`InvalidTaskError` naming the field if the task cannot run."""
        if self.worker_tag is None:
            raise InvalidTaskError(f"{type(self).__name__}.worker_tag", "is not set")

    def inputs(self) -> dict[str, Any]:
        return {f: _plain(getattr(self, f)) for f in self.input_fields}

    def outputs(self) -> dict[str, Any]:
        return {f: _plain(getattr(self, f)) for f in self.output_fields}

    def set_outputs(self, values: Mapping[str, Any]) -> None:
        for k, v in values.items():
            if k not in self.output_fields:
                raise KeyError(f"{k!r} is not an output field of {type(self).__name__}")
            setattr(self, k, v)

    def __deepcopy__(self, memo: dict[int, Any]) -> Task:
        """A deep copy (``copy.deepcopy``; TensorRT-LLM's controllers copy a
        task per sample): immutable field values are shared, the rest copied
        deeply.  The values are already valid, so no validator runs again."""
        cls = type(self)
        new = cls.__new__(cls)
        memo[id(self)] = new
        fields = new.__dict__
        for name, value in self.__dict__.items():
            kind = type(value)
            if kind in _IMMUTABLE:
                fields[name] = value
            elif (kind is list or kind is dict) and not value:
                # an empty list or dict (most of a task's containers): a new one,
                # shared where the original was (the memo), as deepcopy does
                copied = memo.get(id(value))
                if copied is None:
                    copied = memo[id(value)] = kind()
                fields[name] = copied
            else:
                fields[name] = copy.deepcopy(value, memo)
        return new


#: values a deep copy can share
_IMMUTABLE = frozenset({str, int, float, bool, type(None), bytes})

# the fields a deep copy makes anew: name, value, and the type that copies the
# value (a list or dict of immutable values, which ``deepcopy`` would copy to the
# same: ``list(value)``, ``dict(value)``)
_Plan = list[tuple[str, Any, type]]


def _copy_plan(state: dict[str, Any]) -> _Plan | None:
    """How to deep-copy the task whose ``__dict__`` is ``state`` without
    ``deepcopy``'s memo: immutable values and enum members are shared, lists
    and dicts of immutable values made anew.  ``None`` when a value needs ``deepcopy`` (or
    is held twice, so the copy must hold one object twice)."""
    plan: _Plan = []
    for name, value in state.items():
        kind = type(value)
        if kind in _IMMUTABLE or (
            isinstance(value, enum.Enum) and kind.__deepcopy__ is enum.Enum.__deepcopy__
        ):
            continue  # (an enum member's deep copy is itself)
        if kind is list:
            if value and not all(type(v) in _IMMUTABLE for v in value):
                return None
        elif kind is dict:
            if value and not all(
                type(k) in _IMMUTABLE and type(v) in _IMMUTABLE for k, v in value.items()
            ):
                return None
        else:
            return None
        plan.append((name, value, kind))
    if len({id(value) for _, value, _ in plan}) < len(plan):
        return None
    return plan


def _copy_by_plan(task: Task, state: dict[str, Any], plan: _Plan) -> Task:
    """A deep copy of ``task`` (whose ``__dict__`` is ``state``) by a plan that
    needs no memo (see :func:`_copy_plan`)."""
    cls = type(task)
    new = cls.__new__(cls)
    fields = new.__dict__
    fields.update(state)  # shares what needs no copy
    for name, value, flat in plan:
        fields[name] = flat(value)
    return new


def _deepcopy_lists(tasks: list[Task], n: int) -> list[list[Task]]:
    """``[copy.deepcopy(tasks) for _ in range(n)]`` (a TensorRT-LLM controller
    copying its task list per sample), each task's fields sorted once for all
    ``n`` copies.  That shortcut is taken for a plain list of distinct tasks
    whose values to copy are lists or dicts of immutable values (they cannot
    refer to one another); anything else goes through ``copy.deepcopy``."""
    plans = []
    if type(tasks) is list and len({id(t) for t in tasks}) == len(tasks):
        for original in tasks:
            if (
                not isinstance(original, Task)
                or type(original).__deepcopy__ is not Task.__deepcopy__
            ):
                break
            state = original.__dict__  # what its deep copy reads (as __deepcopy__ does)
            plan = _copy_plan(state)
            if plan is None:
                break
            plans.append((original, state, plan))
    if len(plans) != len(tasks):
        return [copy.deepcopy(tasks) for _ in range(n)]
    return [[_copy_by_plan(t, state, plan) for t, state, plan in plans] for _ in range(n)]


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


@_setattr_hooks
@attrs.define(slots=False, eq=False)
class GenerationTask(Task):
    """Generate one completion.

    Inputs: exactly one of ``input_str`` (prompt text), ``input_tokens`` (token ids)
    or ``messages`` (chat messages ``{"role", "content"}``, rendered with the
    engine's chat template); sampling parameters (``None`` means the worker's
    default); ``continuation``: the start of the response, which the model
    continues (output excludes it).  Outputs, filled by the worker: ``output_str``, ``output_tokens``,
    ``logprobs`` (one per output token, when ``num_logprobs`` is set),
    ``top_logprobs`` (per output token its ``num_logprobs`` most likely
    alternatives ``((token, logprob), ...)``, when ``num_logprobs > 0`` and the
    engine reports them; ``None`` where it gives only the sampled token's),
    ``finish_reason``, ``prompt_tokens_num``, ``completion_tokens_num``.
    """

    worker_tag: Any = "generation"
    input_str: str | None = None
    input_tokens: list[int] | None = None
    messages: list[dict[str, str]] | None = None
    max_tokens: int | None = attrs.field(default=None, validator=_sampling_validator)
    temperature: float | None = attrs.field(default=None, validator=_sampling_validator)
    top_p: float | None = attrs.field(default=None, validator=_sampling_validator)
    top_k: int | None = attrs.field(default=None, validator=_sampling_validator)
    stop: list[str] = attrs.field(factory=list, converter=_stop_converter)
    seed: int | None = attrs.field(default=None, validator=_sampling_validator)
    num_logprobs: int | None = attrs.field(default=None, validator=_sampling_validator)
    continuation: str | None = None
    n: int = attrs.field(default=1, validator=_sampling_validator)
    ignore_eos: bool = False
    skip_tokenizer: bool = False
    skip_detokenizer: bool = False

    output_str: str | None = None
    output_tokens: list[int] | None = None
    logprobs: list[float] | None = None
    top_logprobs: list[tuple[tuple[str, float], ...]] | None = None
    finish_reason: str | None = None
    prompt_tokens_num: int = 0
    completion_tokens_num: int = 0
    customized_result_fields: dict[str, Any] = attrs.field(factory=dict)

    input_fields: ClassVar[tuple[str, ...]] = (
        "input_str",
        "input_tokens",
        "messages",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "seed",
        "num_logprobs",
        "continuation",
    )
    output_fields: ClassVar[tuple[str, ...]] = (
        "output_str",
        "output_tokens",
        "logprobs",
        "top_logprobs",
        "finish_reason",
        "prompt_tokens_num",
        "completion_tokens_num",
    )

    @classmethod
    def create_from_prompt(cls, prompt: str | Sequence[Mapping[str, str]]) -> GenerationTask:
        """A task for ``prompt`` (text, or a list of chat messages)."""
        if isinstance(prompt, str):
            return cls(input_str=prompt)
        return cls(messages=[dict(m) for m in prompt])

    def create_scaffolding_output(self) -> ScaffoldingOutput:
        return ScaffoldingOutput(
            self.output_str,
            self.output_tokens,
            finish_reason=self.finish_reason,
            details=dict(self.customized_result_fields),
        )

    @property
    def prompt(self) -> str | list[dict[str, str]] | list[int] | None:
        if self.input_str is not None:
            return self.input_str
        if self.messages is not None:
            return self.messages
        return self.input_tokens

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        if (
            (self.input_str is not None)
            + (self.input_tokens is not None)
            + (self.messages is not None)
        ) != 1:
            given = [
                f for f in ("input_str", "input_tokens", "messages") if getattr(self, f) is not None
            ]
            raise InvalidTaskError(
                f"{name}.input_str",
                "exactly one of input_str, input_tokens or messages must be set, "
                f"got {given or 'none'}",
            )
        if self.input_str is not None and not isinstance(self.input_str, str):
            raise InvalidTaskError(f"{name}.input_str", "prompt must be a string")
        if self.input_tokens is not None and not self.input_tokens:
            raise InvalidTaskError(f"{name}.input_tokens", "must not be empty")
        if self.messages is not None:
            _check_messages(f"{name}.messages", self.messages)
        # the sampling fields need no check here: attrs validates each one on
        # __init__ and on every assignment (on_setattr), naming the field
        if self.n != 1:
            raise InvalidTaskError(
                f"{name}.n", f"must be 1 (submit one task per sample), got {self.n!r}"
            )
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise InvalidTaskError(
                    f"{name}.stop", f"stop strings must be non-empty str, got {s!r}"
                )

    def check_prompt(self) -> None:
        """Refuse a blank text prompt (the native runtime calls this at submission;
        TensorRT-LLM compatibility leaves what a prompt means to the controller)."""
        if self.input_str is not None and not self.input_str.strip():
            raise InvalidTaskError(
                f"{type(self).__name__}.input_str", "prompt must be a non-empty string"
            )

    def sampling_params(self, defaults: SamplingParams) -> SamplingParams:
        """These sampling parameters, with ``None`` fields taken from ``defaults``."""
        return SamplingParams(
            max_tokens=self.max_tokens if self.max_tokens is not None else defaults.max_tokens,
            temperature=self.temperature if self.temperature is not None else defaults.temperature,
            top_p=self.top_p if self.top_p is not None else defaults.top_p,
            top_k=self.top_k if self.top_k is not None else defaults.top_k,
            stop=tuple(self.stop) if self.stop else defaults.stop,
            seed=self.seed if self.seed is not None else defaults.seed,
            num_logprobs=self.num_logprobs
            if self.num_logprobs is not None
            else defaults.num_logprobs,
            ignore_eos=self.ignore_eos or defaults.ignore_eos,
        )

    def request_inputs(self) -> dict[str, Any]:
        """What the engine is asked to continue: the :class:`EngineRequest`
        fields for this task's input (subclasses with other inputs override it)."""
        return {
            "prompt": self.input_str,
            "prompt_token_ids": self.input_tokens,
            "messages": self.messages,
        }

    def engine_request(self, defaults: SamplingParams, *, stream: bool) -> EngineRequest:
        """This task as an engine request, ``None`` sampling fields taken from
        ``defaults``; a value the engine API refuses raises
        :class:`InvalidTaskError` naming this task's field."""
        try:
            return EngineRequest(
                self.sampling_params(defaults),
                stream=stream,
                continuation=self.continuation or None,
                **self.request_inputs(),
            )
        except InvalidRequestError as e:
            raise InvalidTaskError.of(type(self).__name__, e) from None


def _check_messages(field: str, messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidTaskError(field, "must be a non-empty list of {'role', 'content'} dicts")
    for i, m in enumerate(messages):
        if (
            not isinstance(m, Mapping)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise InvalidTaskError(
                field, f"message {i} must have str 'role' and 'content', got {m!r}"
            )


@_setattr_hooks
@attrs.define(slots=False, eq=False)
class StreamGenerationTask(GenerationTask):
    """A generation task delivered to its controller in pieces.

    Native controllers consume it with ``ctx.stream(task)``.  Generator
    (TensorRT-LLM style) controllers yield it repeatedly: each yield returns once
    at least ``streaming_step`` new tokens arrived (``0``: whatever is ready), with
    ``output_str`` holding everything so far; ``end_flag`` is set when generation
    finished.  Setting ``cancel_flag`` and yielding again aborts it in the engine.
    """

    streaming_step: int = attrs.field(default=1, validator=attrs.validators.ge(0))
    cancel_flag: bool = False
    end_flag: bool = False
    request_handle: Any = None

    @classmethod
    def create_from_generation_task(
        cls, task: GenerationTask, streaming_step: int = 1
    ) -> StreamGenerationTask:
        values = {a.name: getattr(task, a.name) for a in attrs.fields(GenerationTask) if a.init}
        return cls(**values, streaming_step=streaming_step)


@_setattr_hooks
@attrs.define(slots=False, eq=False)
class RewardTask(Task):
    """Score candidate responses to ``input_str`` with a reward model.

    Outputs: ``scores`` (one per candidate) and, for process reward models asked
    to split on ``step_separator``, ``step_scores`` (one list per candidate).  A
    reward worker that generates to score (:class:`SelfVerifier`) reports the
    tokens it used in ``prompt_tokens_num`` / ``completion_tokens_num``; they
    count in the request's usage like a generation's.
    """

    worker_tag: Any = "reward"
    input_str: str | None = None
    candidates: list[str] = attrs.field(factory=list)
    step_separator: str | None = None
    scores: list[float] | None = None
    step_scores: list[list[float]] | None = None
    prompt_tokens_num: int = 0
    completion_tokens_num: int = 0

    input_fields: ClassVar[tuple[str, ...]] = ("input_str", "candidates", "step_separator")
    output_fields: ClassVar[tuple[str, ...]] = (
        "scores",
        "step_scores",
        "prompt_tokens_num",
        "completion_tokens_num",
    )

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        if not isinstance(self.input_str, str) or not self.input_str.strip():
            raise InvalidTaskError(f"{name}.input_str", "must be a non-empty string")
        if not self.candidates or not all(isinstance(c, str) for c in self.candidates):
            raise InvalidTaskError(f"{name}.candidates", "must be a non-empty list of strings")


@_setattr_hooks
@attrs.define(slots=False, eq=False)
class ToolCallTask(Task):
    """Call the tool ``tool_name`` with ``arguments``.

    Outputs: ``result_str`` and ``is_error`` (the tool ran but reported a failure,
    which an agent normally shows to the model rather than failing the request).
    """

    worker_tag: Any = "tool"
    tool_name: str | None = None
    arguments: dict[str, Any] = attrs.field(factory=dict)
    result_str: str | None = None
    is_error: bool = False

    input_fields: ClassVar[tuple[str, ...]] = ("tool_name", "arguments")
    output_fields: ClassVar[tuple[str, ...]] = ("result_str", "is_error")

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.tool_name, str) or not self.tool_name:
            raise InvalidTaskError(f"{type(self).__name__}.tool_name", "must be a non-empty string")
        if not isinstance(self.arguments, dict):
            raise InvalidTaskError(f"{type(self).__name__}.arguments", "must be a dict")
