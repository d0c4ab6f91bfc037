"""Chain-of-thought sampling: the sampler every other method can wrap."""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import attrs

from engine_bridge import PrefixGroup

from .._budget import TokenBudgetExhaustedError
from .._context import RequestContext
from .._tasks import GenerationTask, ScaffoldingOutput, StreamGenerationTask
from ._instructions import last_user_message, question_text

__all__ = [
    "Sampler",
    "fresh_task",
    "grouped",
    "result_from",
    "sample_count",
    "sample_within_budget",
]

COT_INSTRUCTION = "Think step by step, then give the final answer as \\boxed{answer}."


def _blank(cls: type[GenerationTask]) -> tuple[dict[str, Any], tuple[tuple[str, Any], ...]]:
    """``cls``'s defaults, and the factories of the mutable fields that no copy
    takes from its original.

    The defaults are laid out as ``__init__`` lays an instance's out: on CPython
    a class of at most 30 fields shares its dict keys between instances, and a
    copy filled from a dict that shares them shares them too (about half the
    memory of a dict of its own); a class with more gets a compact dict."""
    sparse = {f.name for f in dataclasses.fields(cls) if f.metadata.get("sparse")}
    made = cls.__new__(cls).__dict__  # (split: the class's shared keys, as __init__ fills them)
    for name, value in cls().__dict__.items():
        if name not in sparse:  # a sparse field's default is the class attribute
            made[name] = value
    compact = dict(made)
    plain = made if sys.getsizeof(made) < sys.getsizeof(compact) else compact
    factories: list[tuple[str, Any]] = []
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            plain[f.name] = None  # the factory's value replaces it
            if f.name not in cls.input_fields:
                factories.append((f.name, f.default_factory))
    return plain, tuple(factories)


# every sample copies a task (often twice): the copy skips the dataclass's
# __init__, whose validators already passed on the values copied (each field is
# checked on assignment too), for the two classes whose fields are known here
_BLANKS = {cls: _blank(cls) for cls in (GenerationTask, StreamGenerationTask)}


def fresh_task(task: GenerationTask, cls: type[GenerationTask] = GenerationTask) -> GenerationTask:
    """A new task with ``task``'s inputs and sampling parameters, outputs empty."""
    return fresh_copies(task, 1, cls)[0]


def fresh_copies(
    task: GenerationTask, n: int, cls: type[GenerationTask] = GenerationTask
) -> list[GenerationTask]:
    """``n`` :func:`fresh_task` copies of ``task`` (its fields read once)."""
    fields = {f: getattr(task, f) for f in GenerationTask.input_fields}
    fields["worker_tag"] = task.worker_tag
    stop, messages = task.stop, task.messages
    fields["prefix_group"] = task.prefix_group  # (not an input: no trace shows it)
    blank = _BLANKS.get(cls)
    if blank is None:  # a subclass of somebody's: its own __init__ and validators
        return [
            cls(**{**fields, "stop": list(stop), "messages": _copied(messages)}) for _ in range(n)
        ]
    plain, factories = blank
    base = plain.copy()  # as laid out in the defaults: so is each copy filled from it
    base.update(fields)
    copies = []
    for _ in range(n):
        new = cls.__new__(cls)
        values = new.__dict__
        values.update(base)
        for name, factory in factories:
            values[name] = factory()
        values["stop"] = list(stop)
        if messages is not None:
            values["messages"] = _copied(messages)
        copies.append(new)
    return copies


def grouped(task: GenerationTask, n: int) -> GenerationTask:
    """A shallow copy of ``task`` whose samples share one prefix group (its own,
    when it has one): the engine computes their common prompt once
    (:class:`~engine_bridge.PrefixGroup`).  ``task`` itself is left as it was."""
    out = copy.copy(task)
    if out.prefix_group is None:
        out.prefix_group = PrefixGroup(n)
    return out


def _copied(messages: list[dict[str, str]] | None) -> list[dict[str, str]] | None:
    return None if messages is None else [dict(m) for m in messages]


async def sample_within_budget(
    sampler: Any, ctx: RequestContext, task: GenerationTask
) -> GenerationTask | None:
    """``await sampler.run(ctx, task)``, or ``None`` if the request's token budget
    ran out before the sample finished."""
    try:
        out: GenerationTask = await sampler.run(ctx, task)
    except TokenBudgetExhaustedError:
        return None
    return out


def sample_count(default: int, override: int | None) -> int:
    """The samples a request asked for (``override``) or the method's default."""
    n = default if override is None else override
    if n < 1:
        raise ValueError(f"samples must be >= 1, got {n}")
    return n


def result_from(
    task: GenerationTask, winner: GenerationTask | None, details: dict[str, Any]
) -> GenerationTask:
    """A method's answer: ``task``'s inputs with ``winner``'s outputs (or an empty
    answer with finish reason ``"no_answer"``) and ``details``."""
    result = fresh_task(task)
    if winner is None:
        result.output_str = ""
        result.finish_reason = "no_answer"
    else:
        result.output_str = winner.output_str
        result.output_tokens = winner.output_tokens
        result.finish_reason = winner.finish_reason
    result.customized_result_fields = details
    return result


def _instructed(messages: Any, instruction: str) -> list[Any]:
    """``messages`` with ``instruction`` appended to the last user message (a
    copy; the caller's dicts are not changed), as it is appended to a text
    prompt; a system message first when no user message has text.  (Measured
    on the embedded model: a vote over the chat "What is 12 + 7?" with the
    instruction as a system message answered 9, 9 and "correct" in three runs,
    most samples cut; appended to the question it answers 19: docs/serve.md.)"""
    out = list(messages)
    i = last_user_message(out)
    if i is None:
        return [{"role": "system", "content": instruction}, *out]
    out[i] = {**out[i], "content": f"{out[i]['content']}\n{instruction}"}
    return out


#: what :attr:`Sampler.instruction` takes: a text, or question -> text (or None)
Instruction = str | Callable[[str], str | None]


def _instruction(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, str) and not callable(value):
        raise TypeError(
            f"Sampler.instruction must be a str, a callable (question -> str | None) "
            f"or None, got {value!r}"
        )


@attrs.frozen
class Sampler:
    """Chain-of-thought generation: one sample of the model's reasoning.

    Parameters override the task's sampling parameters only where the task leaves
    them unset.  ``instruction`` (if set) is appended to a text prompt, or to the
    last user message of a chat (a copy); a callable is given the question (the
    text prompt, or the chat's last user message) and returns the instruction
    for it (``None``: none), e.g. :class:`ByQuestionKind`.  With ``stream=True`` the sample is
    generated as a stream and each step is published as a partial output of the
    request.

    Paper: Wei et al., "Chain-of-Thought Prompting Elicits Reasoning in Large
    Language Models" (2022); Kojima et al., "Large Language Models are Zero-Shot
    Reasoners" (2022).
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    num_logprobs: int | None = None
    instruction: Instruction | None = attrs.field(default=None, validator=_instruction)
    stream: bool = False
    streaming_step: int = 8
    worker_tag: Any = "generation"

    def __attrs_post_init__(self) -> None:
        probe = GenerationTask(input_str="x")  # validates the values, naming the field
        for name in ("max_tokens", "temperature", "top_p", "top_k", "num_logprobs"):
            setattr(probe, name, getattr(self, name))

    def prepare(self, task: GenerationTask) -> GenerationTask:
        t = fresh_task(task, StreamGenerationTask if self.stream else GenerationTask)
        t.worker_tag = self.worker_tag
        for name in ("max_tokens", "temperature", "top_p", "top_k", "num_logprobs"):
            if getattr(t, name) is None and getattr(self, name) is not None:
                setattr(t, name, getattr(self, name))
        instruction = self.instruction
        if callable(instruction):
            instruction = instruction(question_text(t.input_str, t.messages))
        if instruction:
            if t.input_str is not None:
                t.input_str = f"{t.input_str}\n{instruction}"
            elif t.messages is not None:
                t.messages = _instructed(t.messages, instruction)
        return t

    async def run(
        self, ctx: RequestContext, task: GenerationTask, /, **kwargs: Any
    ) -> GenerationTask:
        t = self.prepare(task)
        if isinstance(t, StreamGenerationTask):
            t.streaming_step = self.streaming_step
            async with ctx.stream(t) as updates:
                async for partial in updates:
                    ctx.emit(
                        ScaffoldingOutput(
                            partial.output_str, list(partial.output_tokens or ()), finished=False
                        )
                    )
            return t
        return await ctx.run(t)
