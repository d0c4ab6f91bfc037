"""A ReAct agent: the model reasons, calls tools, reads their results, answers."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import attrs

from .._context import RequestContext
from .._errors import InvalidTaskError
from .._tasks import GenerationTask, ScaffoldingOutput, ToolCallTask
from ._sampler import Sampler, fresh_task, result_from

__all__ = ["ReActAgent"]

INSTRUCTIONS = """You can use these tools:
{tools}

Work in steps. To use a tool, write exactly:
Thought: <your reasoning>
Action: <tool name>
Action Input: <the tool's arguments as a JSON object>
Then stop; the result comes back as "Observation: <result>". Repeat as needed.
When you know the answer, write:
Final Answer: <the answer>"""

#: the system message with a worked exchange: the format shown instead of
#: described (the embedded 135M model follows a shown exchange, and ignores the
#: described format: docs/methods/agents.md)
EXAMPLE_INSTRUCTIONS = """You can use these tools:
{tools}

Answer in this format. Example:
{example}"""

#: the exchange shown when a ``python`` tool is offered and ``example=True``
PYTHON_EXAMPLE = """Question: What is 3**4 + 1?
Thought: I will compute it with python.
Action: python
Action Input: {"code": "print(3**4 + 1)"}
Observation: 82
Thought: The tool printed 82.
Final Answer: 82"""

_ACTION = re.compile(r"Action:\s*(\S+)\s*\n+\s*Action Input:\s*(.*)", re.DOTALL)
_FINAL = re.compile(r"Final Answer:\s*(.*)", re.DOTALL)


@attrs.frozen
class ReActAgent:
    """Reason-and-act loop over :class:`ToolCallTask`.

    ``tools`` maps tool names to one-line descriptions (``tool_worker.specs()``);
    they are listed in a system message together with the Thought / Action /
    Action Input / Observation / Final Answer format, and, when a ``python`` tool
    is offered and ``example`` is True, one worked exchange (the question is then
    asked as ``Question: ...``, as in the example); ``example`` may also be a
    worked exchange of the caller's own, for any tools (``Question:``,
    ``Action:``, ``Action Input:``, ``Observation:``, ``Final Answer:`` lines).  The reply starts with
    ``primer`` (``"Thought:"``; ``""`` for none), so the model begins in the
    format: on the embedded 135M model this is what makes it call tools (see
    docs/methods/agents.md for the measurement).  Each turn continues the
    assistant's transcript (the engine's ``continuation``) until the model writes
    ``Observation:``; the named tool runs (worker ``tool_tag``) and its result is
    appended as the observation.  A tool the model names wrongly, or arguments
    that are not JSON, become an error observation the model can correct.  Ends
    at ``Final Answer:``, a turn without an action, or after ``max_turns`` turns.
    The transcript is published as partial output after every turn.

    ``output_str`` is the final answer; ``details``: ``answer``, ``turns``,
    ``tool_calls`` (name, arguments, result, is_error), ``transcript``,
    ``finished`` (a final answer was given).

    Paper: Yao et al., "ReAct: Synergizing Reasoning and Acting in Language
    Models" (ICLR 2023).
    """

    tools: Mapping[str, str] = attrs.field(converter=dict)
    sampler: Sampler = attrs.field(factory=lambda: Sampler(max_tokens=256, temperature=0.0))
    max_turns: int = attrs.field(default=6, validator=attrs.validators.ge(1))
    tool_tag: Any = "tool"
    max_observation: int = attrs.field(default=2000, validator=attrs.validators.ge(1))
    primer: str = "Thought:"
    example: bool | str = attrs.field(default=True)

    @example.validator
    def _check_example(self, attribute: Any, value: bool | str) -> None:
        if isinstance(value, bool):
            return
        if not isinstance(value, str):
            raise TypeError(f"ReActAgent.example must be a bool or a str, got {value!r}")
        missing = [k for k in ("Action:", "Action Input:", "Final Answer:") if k not in value]
        if missing:
            raise ValueError(
                "ReActAgent.example must show a whole exchange; it has no "
                + ", ".join(repr(k) for k in missing)
            )

    @tools.validator
    def _check_tools(self, attribute: Any, value: dict[str, str]) -> None:
        if not value:
            raise ValueError("ReActAgent needs at least one tool")

    def _chat(self, task: GenerationTask) -> list[dict[str, str]]:
        listing = "\n".join(f"- {name}: {desc}" for name, desc in self.tools.items())
        if isinstance(self.example, str):
            example: str | None = self.example
        else:
            example = PYTHON_EXAMPLE if self.example and "python" in self.tools else None
        shown = example is not None
        template = INSTRUCTIONS if example is None else EXAMPLE_INSTRUCTIONS
        content = template.replace("{tools}", listing).replace("{example}", example or "")
        system = {"role": "system", "content": content}
        if task.messages is not None:
            return [system, *(dict(m) for m in task.messages)]
        if task.input_str is None:
            raise ValueError("ReActAgent needs a text prompt or chat messages")
        question = task.input_str
        if shown:
            question = f"Question: {question}"  # as in the example
        return [system, {"role": "user", "content": question}]

    async def run(
        self, ctx: RequestContext, task: GenerationTask, /, **kwargs: Any
    ) -> GenerationTask:
        messages = self._chat(task)
        transcript = self.primer  # the reply starts in the format (the engine continues it)
        calls: list[dict[str, Any]] = []
        answer: str | None = None
        turns = 0
        for turns in range(1, self.max_turns + 1):  # noqa: B007
            t = self.sampler.prepare(fresh_task(task))
            t.input_str, t.input_tokens, t.messages = None, None, messages
            t.stop = [*t.stop, "Observation:"]
            t.continuation = transcript or None
            out = await ctx.run(t)
            text = out.output_str or ""
            transcript += text
            final = _FINAL.search(text)
            action = _ACTION.search(text)
            if final and (not action or final.start() > action.start()):
                answer = final.group(1).strip()
                break
            if not action:
                answer = text.strip()
                break
            name, raw = action.group(1), action.group(2).strip()
            observation = await self._act(ctx, name, raw, calls)
            if not transcript.endswith("\n"):
                transcript += "\n"
            transcript += f"Observation: {observation}\n{self.primer}"
            ctx.emit(ScaffoldingOutput(transcript, finished=False))
        finished = answer is not None and _FINAL.search(transcript) is not None
        winner = fresh_task(task)
        winner.output_str = answer if answer is not None else ""
        winner.finish_reason = "stop" if finished else "length"
        return result_from(
            task,
            winner,
            {
                "answer": answer,
                "turns": turns,
                "tool_calls": calls,
                "transcript": transcript,
                "finished": finished,
            },
        )

    async def _act(
        self, ctx: RequestContext, name: str, raw: str, calls: list[dict[str, Any]]
    ) -> str:
        if name not in self.tools:
            result, is_error = f"error: unknown tool {name!r}; tools: {', '.join(self.tools)}", True
            arguments: Any = raw
        else:
            try:
                arguments = json.loads(_first_json(raw))
                if not isinstance(arguments, dict):
                    raise ValueError("arguments must be a JSON object")
            except ValueError as e:
                arguments = raw
                result, is_error = f"error: Action Input is not a JSON object ({e})", True
            else:
                try:
                    call = await ctx.run(
                        ToolCallTask(worker_tag=self.tool_tag, tool_name=name, arguments=arguments)
                    )
                except InvalidTaskError as e:
                    if not e.field.endswith(".arguments"):
                        raise  # not the model's mistake: the set-up is wrong
                    # the worker refused the arguments (its schema): the model sees why
                    result, is_error = f"error: {e}", True
                else:
                    result, is_error = call.result_str or "", call.is_error
        if len(result) > self.max_observation:
            result = result[: self.max_observation] + " ..."
        calls.append({"name": name, "arguments": arguments, "result": result, "is_error": is_error})
        return result


def _first_json(raw: str) -> str:
    """The first balanced {...} in ``raw`` (models often add text after it)."""
    start = raw.find("{")
    if start == -1:
        return raw
    depth, in_str, escape = 0, False, False
    for i in range(start, len(raw)):
        c = raw[i]
        if in_str:
            if escape:
                escape = False
            elif c == "\\":
                escape = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return raw[start : i + 1]
    return raw[start:]
