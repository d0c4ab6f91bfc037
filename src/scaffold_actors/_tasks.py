"""Tasks: the units of work a controller asks workers for.

Tasks are mutable dataclasses, as TensorRT-LLM's are: a controller fills the
inputs, a worker fills the outputs.  Field values are validated whenever they are set, and
:meth:`Task.validate` checks the whole task when it is submitted, so bad input is
rejected with a message naming the field before anything runs.

Tasks deliberately keep a ``__dict__`` (no slots): controllers ported from
TensorRT-LLM attach ad-hoc attributes to tasks, and that must keep working.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from engine_bridge import (
    EngineRequest,
    InvalidRequestError,
    PrefixGroup,
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


class ScaffoldingOutput:
    """The user-facing output of a request (or a partial snapshot while streaming).

    Every form TensorRT-LLM has had is accepted: ``ScaffoldingOutput()`` with
    ``output_str`` set afterwards (2025), ``ScaffoldingOutput(text, token_ids)``
    (1.2 and later, ``data`` third), and ours, ``ScaffoldingOutput(output_str,
    output_tokens, finish_reason=..., details=...)``.  ``text`` and
    ``output_str`` are one value under two names, as are ``token_ids`` and
    ``output_tokens``.  ``details`` carries method-specific information (votes,
    scores, ...).  Fields are assignable, as in TensorRT-LLM.
    """

    __slots__ = ("data", "details", "finish_reason", "finished", "output_str", "output_tokens")

    def __init__(
        self,
        text: str | None = None,
        token_ids: Sequence[int] | None = None,
        data: Any = None,
        *,
        finish_reason: str | None = None,
        finished: bool = True,
        details: Mapping[str, Any] | None = None,
        output_str: str | None = None,
        output_tokens: Sequence[int] | None = None,
    ) -> None:
        self.output_str = output_str if text is None else text
        self.output_tokens = output_tokens if token_ids is None else token_ids
        self.data = data
        self.finish_reason = finish_reason
        self.finished = finished
        self.details: Mapping[str, Any] = {} if details is None else details

    @property
    def text(self) -> str:
        """The output text (``""`` while there is none)."""
        return self.output_str or ""

    @text.setter
    def text(self, value: str | None) -> None:
        self.output_str = value

    @property
    def token_ids(self) -> Sequence[int]:
        """The output token ids (``[]`` while there are none)."""
        return self.output_tokens if self.output_tokens is not None else []

    @token_ids.setter
    def token_ids(self, value: Sequence[int] | None) -> None:
        self.output_tokens = value

    @property
    def outputs(self) -> list[ScaffoldingOutput]:
        """``[self]``: TensorRT-LLM's 2025 results read ``output.outputs[0].text``."""
        return [self]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScaffoldingOutput):
            return NotImplemented
        return (
            self.output_str == other.output_str
            and self.output_tokens == other.output_tokens
            and self.data == other.data
            and self.finish_reason == other.finish_reason
            and self.finished == other.finished
            and self.details == other.details
        )

    __hash__ = None  # type: ignore[assignment]  # (mutable, as TensorRT-LLM's)

    def __repr__(self) -> str:
        return (
            f"ScaffoldingOutput(text={self.output_str!r}, token_ids={self.output_tokens!r}, "
            f"finish_reason={self.finish_reason!r}, finished={self.finished!r}, "
            f"details={dict(self.details)!r})"
        )


#: a field's validator: ``(task, field name, value)``, raises if the value is refused
Validator = Callable[[Any, str, Any], None]


def task_field(
    *,
    default: Any = dataclasses.MISSING,
    factory: Callable[[], Any] | None = None,
    validator: Validator | None = None,
    converter: Callable[[Any], Any] | None = None,
    kw_only: bool | Any = dataclasses.MISSING,
) -> Any:
    """A task's dataclass field whose value is converted and validated whenever
    it is set (in ``__init__`` and on every later assignment, in a subclass of
    one's own too)."""
    metadata: dict[str, Any] = {}
    if validator is not None:
        metadata["validator"] = validator
    if converter is not None:
        metadata["converter"] = converter
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata, kw_only=kw_only)
    return dataclasses.field(default=default, metadata=metadata, kw_only=kw_only)


def sparse_field(default: Any) -> Any:
    """A rarely set field with an immutable ``default``: copies made for samples
    (``fresh_copies``) leave it out of their ``__dict__`` (the class attribute
    answers), so their dicts stay small."""
    return dataclasses.field(default=default, metadata={"sparse": True})


def _sampling_validator(inst: Any, name: str, value: Any) -> None:
    """Check one sampling field, naming it in the error."""
    if value is None:
        return
    try:
        check_sampling_field(name, value)
    except InvalidRequestError as e:
        raise InvalidTaskError.of(type(inst).__name__, e) from None


def _group_validator(inst: Any, name: str, value: Any) -> None:
    if value is not None and not isinstance(value, PrefixGroup):
        raise InvalidTaskError(
            f"{type(inst).__name__}.{name}", f"must be a PrefixGroup or None, got {value!r}"
        )


def _at_least_zero(inst: Any, name: str, value: Any) -> None:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{type(inst).__name__}.{name} must be an int >= 0, got {value!r}")


def _hooks_of(cls: type) -> dict[str, tuple[Any, Any]]:
    """``cls``'s fields with a converter or validator (its dataclass fields'
    metadata), by name."""
    hooks = {}
    for f in dataclasses.fields(cls):
        converter, validator = f.metadata.get("converter"), f.metadata.get("validator")
        if converter is not None or validator is not None:
            hooks[f.name] = (converter, validator)
    return hooks


#: the field hooks of task classes that define their own ``__setattr__``
_OTHER_HOOKS: dict[type, dict[str, tuple[Any, Any]]] = {}


def _setattr_for(cls: type) -> Callable[[Any, str, Any], None]:
    """The ``__setattr__`` of task class ``cls``: the field's converter, then its
    validator, for the fields that have them; one dict lookup otherwise.  The
    table is read from the dataclass fields on the first assignment (when
    ``@dataclass`` has processed the class, a subclass of a user's included)."""
    table: list[dict[str, tuple[Any, Any]]] = []
    set_ = object.__setattr__

    def __setattr__(self: Any, name: str, value: Any) -> None:
        owner = type(self)
        hooks: dict[str, tuple[Any, Any]] | None
        if owner is cls:
            if not table:
                table.append(_hooks_of(cls))
            hooks = table[0]
        else:  # a subclass with a __setattr__ of its own that calls this one
            hooks = _OTHER_HOOKS.get(owner)
            if hooks is None:
                hooks = _OTHER_HOOKS[owner] = _hooks_of(owner)
        hook = hooks.get(name)
        if hook is not None:
            converter, validator = hook
            if converter is not None:
                value = converter(value)
            if validator is not None:
                validator(self, name, value)
        set_(self, name, value)

    __setattr__.__qualname__ = f"{cls.__qualname__}.__setattr__"
    return __setattr__


def _direct_init(cls: type) -> type:
    """Give one of our task classes (after ``@dataclass``) an ``__init__`` that
    writes its fields straight into the instance dict: the converters and
    validators run as they would through ``__setattr__``, without a hooked
    assignment per field, and a sparse field left at its default stays out of
    the dict (the class attribute answers).  Signature, defaults and factories
    are the dataclass's own.  An instance of a subclass (a user's, maybe with
    a ``__setattr__`` of its own) goes through the dataclass ``__init__``
    unchanged."""
    original = cls.__init__  # type: ignore[misc]
    signature = inspect.signature(original)
    hooks = _hooks_of(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    ns: dict[str, Any] = {"_cls": cls, "_original": original}
    params, forward, body = [], [], []
    keyword_only = False
    for i, p in enumerate(list(signature.parameters.values())[1:]):
        name, f = p.name, by_name[p.name]
        if p.kind is inspect.Parameter.KEYWORD_ONLY and not keyword_only:
            params.append("*")
            keyword_only = True
        if p.default is inspect.Parameter.empty:
            params.append(name)
        else:
            ns[f"_d{i}"] = p.default
            params.append(f"{name}=_d{i}")
        forward.append(f"{name}={name}")
        if f.default_factory is not dataclasses.MISSING:
            ns[f"_f{i}"] = f.default_factory
            body.append(f"    if {name} is _d{i}: {name} = _f{i}()")
        converter, validator = hooks.get(name, (None, None))
        if converter is not None:
            ns[f"_c{i}"] = converter
            body.append(f"    {name} = _c{i}({name})")
        if validator is not None:
            ns[f"_v{i}"] = validator
            body.append(f"    _v{i}(self, {name!r}, {name})")
        if f.metadata.get("sparse"):
            body.append(f"    if {name} is not _d{i}: _values[{name!r}] = {name}")
        else:
            body.append(f"    _values[{name!r}] = {name}")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    source = (
        f"def __init__(self, {', '.join(params)}):\n"
        f"    if type(self) is not _cls:\n"
        f"        return _original(self, {', '.join(forward)})\n"
        "    _values = self.__dict__\n" + "\n".join(body) + "\n"
    )
    exec(source, ns)  # the dataclass's own way of making an __init__
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = original.__doc__
    init.__signature__ = signature
    cls.__init__ = init  # type: ignore[misc]
    return cls


def _stop_converter(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


@dataclasses.dataclass(eq=False)
class Task:
    """Base of all tasks.  ``worker_tag`` names the worker role that runs it.

    Tasks are dataclasses (as TensorRT-LLM's are): ``dataclasses.fields``,
    ``replace`` and ``asdict`` work, a ``@dataclass`` subclass inherits every
    field, and a field's default is a class attribute (a subclass whose
    ``__init__`` never calls ``super().__init__()`` still reads it).  Fields
    with a validator (the sampling parameters) are checked whenever they are
    set, and :meth:`validate` checks the whole task at submission.  Tasks keep a
    ``__dict__``: controllers attach ad-hoc attributes to them.

    ``streaming_output_flag`` (TensorRT-LLM compatible): the request's result
    streams this task's partial outputs while it generates (a generator
    controller yields it as one task, and ``async for`` / ``for`` over the
    result sees them); the worker also appends them to
    ``streaming_output_list``, which the runtime empties once they went out.
    """

    worker_tag: Any = None
    streaming_output_flag: bool = False
    streaming_output_list: list[Any] = dataclasses.field(default_factory=list)
    custom_input_params: dict[str, Any] | None = None
    custom_output_params: dict[str, Any] | None = None

    #: input / output attribute names, used by traces and replay
    input_fields: ClassVar[tuple[str, ...]] = ("custom_input_params",)
    output_fields: ClassVar[tuple[str, ...]] = ("custom_output_params",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__setattr__" not in cls.__dict__:  # (a subclass's own one is kept)
            cls.__setattr__ = _setattr_for(cls)  # type: ignore[method-assign]

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


Task.__setattr__ = _setattr_for(Task)  # type: ignore[method-assign]  # (its subclasses get theirs)

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


@_direct_init
@dataclasses.dataclass(eq=False)
class GenerationTask(Task):
    """Generate one completion.

    Inputs: exactly one of ``input_str`` (prompt text), ``input_tokens`` (token ids)
    or ``messages`` (chat messages ``{"role", "content"}``, rendered with the
    engine's chat template); sampling parameters (``None`` means the worker's
    default); ``continuation``: the start of the response, which the model
    continues (output excludes it); ``prefix_group``: the
    :class:`~engine_bridge.PrefixGroup` of the tasks sharing this one's prompt
    prefix (a vote's samples: the methods set it), so the engine computes the
    prefix once (copies made for samples keep it).  Outputs, filled by the worker: ``output_str``, ``output_tokens``,
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
    max_tokens: int | None = task_field(default=None, validator=_sampling_validator)
    temperature: float | None = task_field(default=None, validator=_sampling_validator)
    top_p: float | None = task_field(default=None, validator=_sampling_validator)
    top_k: int | None = task_field(default=None, validator=_sampling_validator)
    stop: list[str] = task_field(factory=list, converter=_stop_converter)
    seed: int | None = task_field(default=None, validator=_sampling_validator)
    num_logprobs: int | None = task_field(default=None, validator=_sampling_validator)
    continuation: str | None = None
    n: int = task_field(default=1, validator=_sampling_validator)
    ignore_eos: bool = False

    output_str: str | None = None
    output_tokens: list[int] | None = None
    logprobs: list[float] | None = None
    top_logprobs: list[tuple[tuple[str, float], ...]] | None = None
    finish_reason: str | None = None
    prompt_tokens_num: int = 0
    completion_tokens_num: int = 0
    customized_result_fields: dict[str, Any] = dataclasses.field(default_factory=dict)

    # TensorRT-LLM's other fields, last and sparse (a sample's copy leaves them to
    # the class: its dict keeps the few keys CPython shares between instances).
    # The OpenAI-style sampling ones no engine here takes yet are accepted at
    # their defaults and refused by engine workers at submission otherwise
    # (check_not_taken_yet: never dropped)
    skip_tokenizer: bool = sparse_field(False)
    skip_detokenizer: bool = sparse_field(False)
    best_of: int | None = sparse_field(None)
    echo: bool | None = sparse_field(False)
    frequency_penalty: float | None = sparse_field(0.0)
    logit_bias: dict[str, float] | None = sparse_field(None)
    presence_penalty: float | None = sparse_field(0.0)
    suffix: str | None = sparse_field(None)
    user: str | None = sparse_field(None)
    return_context_logits: bool | None = sparse_field(False)
    context_logits: Any = sparse_field(None)
    cumulative_logprob: float | None = sparse_field(None)  # the sum of logprobs, when asked for
    # the requests sharing this one's prompt prefix (a vote's samples): the
    # engine computes the prefix once (copies for samples keep it).  Not sparse:
    # a sample's copy sets it, and a key outside the shared layout would give
    # the copy's dict keys of its own (288 -> 1,584 bytes)
    prefix_group: PrefixGroup | None = task_field(default=None, validator=_group_validator)

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

    @property
    def result(self) -> str | None:
        """``output_str`` (TensorRT-LLM 2025's name for a generation's result)."""
        return self.output_str

    @result.setter
    def result(self, value: str | None) -> None:
        self.output_str = value

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
        # the sampling fields need no check here: each one is validated in
        # __init__ and on every assignment (Task.__setattr__), naming the field
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
                group=self.prefix_group,
                **self.request_inputs(),
            )
        except InvalidRequestError as e:
            raise InvalidTaskError.of(type(self).__name__, e) from None


#: GenerationTask fields that TensorRT-LLM's task has and no engine here takes
#: yet, with the value that means "not asked for" (an engine worker refuses
#: others at submission: :func:`check_not_taken_yet`)
_NOT_TAKEN_YET = (
    ("best_of", None),
    ("echo", False),
    ("frequency_penalty", 0.0),
    ("logit_bias", None),
    ("presence_penalty", 0.0),
    ("suffix", None),
    ("return_context_logits", False),
)
_NOT_TAKEN_DEFAULTS = tuple(default for _, default in _NOT_TAKEN_YET)


def check_not_taken_yet(task: GenerationTask) -> None:
    """Raise :class:`InvalidTaskError` naming the field when ``task`` asks for
    one of TensorRT-LLM's sampling fields that no engine here takes yet (its
    value would otherwise be dropped).  One tuple comparison when none is set."""
    values = (
        task.best_of,
        task.echo,
        task.frequency_penalty,
        task.logit_bias,
        task.presence_penalty,
        task.suffix,
        task.return_context_logits,
    )
    if values == _NOT_TAKEN_DEFAULTS:
        return
    for (field, default), value in zip(_NOT_TAKEN_YET, values, strict=True):
        if value != default and value is not None:
            raise InvalidTaskError(
                f"{type(task).__name__}.{field}",
                f"{value!r} is not supported by scaffold-actors' engines yet "
                f"(leave it at {default!r})",
            )


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


@_direct_init
@dataclasses.dataclass(eq=False)
class StreamGenerationTask(GenerationTask):
    """A generation task delivered to its controller in pieces.

    Native controllers consume it with ``ctx.stream(task)``.  Generator
    (TensorRT-LLM style) controllers yield it repeatedly: each yield returns once
    at least ``streaming_step`` new tokens arrived (``0``: whatever is ready), with
    ``output_str`` holding everything so far; ``end_flag`` is set when generation
    finished.  Setting ``cancel_flag`` and yielding again aborts it in the engine.
    """

    streaming_step: int = task_field(default=1, validator=_at_least_zero)
    cancel_flag: bool = False
    end_flag: bool = False
    request_handle: Any = None

    @classmethod
    def create_from_generation_task(
        cls, task: GenerationTask, streaming_step: int = 1
    ) -> StreamGenerationTask:
        values = {
            f.name: getattr(task, f.name) for f in dataclasses.fields(GenerationTask) if f.init
        }
        return cls(**values, streaming_step=streaming_step)


@_direct_init
@dataclasses.dataclass(eq=False)
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
    input_tokens: list[int] | None = None  # (TensorRT-LLM's; a PyTorchWorker scores them)
    candidates: list[str] = dataclasses.field(default_factory=list)
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
        if self.input_tokens is not None and self.input_str is None:
            return  # token ids to score (a classifier's input), no candidates needed
        if not isinstance(self.input_str, str) or not self.input_str.strip():
            raise InvalidTaskError(f"{name}.input_str", "must be a non-empty string")
        if not self.candidates or not all(isinstance(c, str) for c in self.candidates):
            raise InvalidTaskError(f"{name}.candidates", "must be a non-empty list of strings")


@dataclasses.dataclass(eq=False)
class ToolCallTask(Task):
    """Call the tool ``tool_name`` with ``arguments``.

    Outputs: ``result_str`` and ``is_error`` (the tool ran but reported a failure,
    which an agent normally shows to the model rather than failing the request).
    """

    worker_tag: Any = "tool"
    tool_name: str | None = None
    arguments: dict[str, Any] = dataclasses.field(default_factory=dict)
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
