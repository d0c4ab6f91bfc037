"""Dynasor-CoT: token-budget reasoning that stops once probed answers agree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import attrs

from .._context import RequestContext
from .._tasks import GenerationTask, ScaffoldingOutput, StreamGenerationTask
from ._answers import is_placeholder, sample_answer
from ._sampler import Sampler, result_from

__all__ = ["DynasorCoT"]

PROBE = "... Oh, I suddenly got the answer to the whole problem, **Final Answer**\n\n\\[ \\boxed{"
HEDGES = ("wait", "hmm", "however", "but ", "alternatively", "double-check", "let me")


@attrs.frozen
class DynasorCoT:
    """Reason with ``sampler`` as a stream and, every ``probe_interval`` tokens,
    ask the model for its answer so far (a probe: the reasoning so far, then
    ``probe_text``, generated greedily for ``probe_tokens`` tokens).  Once
    ``certainty_window`` consecutive probes give the same answer, and none of them
    hedges, the reasoning is cancelled (its engine request aborted) and that
    answer returned.  Otherwise the reasoning runs to its end (or
    ``sampler.max_tokens``) and its own answer stands.

    Probes run concurrently with the reasoning, which never waits for them.
    The result's ``output_str`` is the reasoning up to the decisive probe, then
    ``probe_text`` and ``answer}`` (so answer extractors find ``\\boxed{answer}``);
    ``details``: ``answer``, ``early_exit``, ``probes`` (answers in order),
    ``reasoning_tokens``.

    Paper: Fu et al., "Efficiently Serving LLM Reasoning Programs with Certaindex"
    (Dynasor, 2024), and "Reasoning without self-doubt: more efficient
    chain-of-thought through certainty probing" (ICLR 2025 workshop).
    """

    sampler: Sampler = attrs.field(factory=lambda: Sampler(max_tokens=1024))
    probe_interval: int = attrs.field(default=32, validator=attrs.validators.ge(1))
    certainty_window: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    probe_text: str = PROBE
    probe_tokens: int = attrs.field(default=16, validator=attrs.validators.ge(1))
    hedges: tuple[str, ...] = HEDGES
    parse_probe: Callable[[str], str | None] | None = None

    def _answer(self, probe_output: str) -> str | None:
        if self.parse_probe is not None:
            return self.parse_probe(probe_output)
        # the probe ends with "\\boxed{": the answer runs to "}" (or the probe's end)
        answer = probe_output.split("}", 1)[0].split("\\]", 1)[0].strip().strip("$").strip()
        if not answer or any(h in probe_output.lower() for h in self.hedges):
            return None
        if is_placeholder(answer):  # "answer}" copied from an instruction: no answer
            return None
        return answer

    async def run(
        self, ctx: RequestContext, task: GenerationTask, /, **kwargs: Any
    ) -> GenerationTask:
        stream_sampler = attrs.evolve(self.sampler, stream=True, streaming_step=self.probe_interval)
        main = stream_sampler.prepare(task)
        assert isinstance(main, StreamGenerationTask)
        main.streaming_step = self.probe_interval
        answers: dict[int, str | None] = {}
        snapshots: dict[int, str] = {}
        snapshot_tokens: dict[int, int] = {}
        decided: list[int] = []
        window = self.certainty_window

        def certain_at(i: int) -> bool:
            run = [answers.get(j) for j in range(i - window + 1, i + 1)]
            return all(j in answers for j in range(i - window + 1, i + 1)) and (
                run[0] is not None and len(set(run)) == 1
            )

        with anyio.CancelScope() as scope:

            async def probe(i: int, reasoning: str) -> None:
                t = GenerationTask(**_probe_fields(main, reasoning + self.probe_text))
                t.max_tokens = self.probe_tokens
                t.temperature = 0.0
                t.stop = ["}"]
                out = await ctx.run(t)
                answers[i] = self._answer(out.output_str or "")
                for j in range(i, i + window):  # a late probe may complete a window
                    if j in answers and certain_at(j) and not decided:
                        decided.append(j)
                        scope.cancel()

            async with ctx.parallel() as par:
                async with ctx.stream(main) as updates:
                    i = 0
                    async for partial in updates:
                        if partial.end_flag:
                            break
                        snapshots[i] = partial.output_str or ""
                        snapshot_tokens[i] = len(partial.output_tokens or ())
                        ctx.emit(ScaffoldingOutput(snapshots[i], finished=False))
                        par.start(probe, i, snapshots[i])
                        i += 1
                par.cancel_all()  # the reasoning ended by itself: its answer stands
        probes = [answers.get(j) for j in sorted(answers)]
        if decided:
            j = decided[0]
            answer = answers[j]
            result = result_from(task, None, {})
            result.output_str = f"{snapshots[j]}{self.probe_text}{answer}}}"
            result.finish_reason = "certain"
            result.customized_result_fields = {
                "answer": answer,
                "early_exit": True,
                "probes": probes,
                "reasoning_tokens": snapshot_tokens[j],
            }
            return result
        return result_from(
            task,
            main,
            {
                # its own answer, as a vote would read it (cut: only a boxed one)
                "answer": sample_answer(main.output_str, main.finish_reason),
                "early_exit": False,
                "probes": probes,
                "reasoning_tokens": len(main.output_tokens or ()),
            },
        )


def _probe_fields(main: GenerationTask, continuation: str) -> dict[str, Any]:
    fields = {f: getattr(main, f) for f in GenerationTask.input_fields}
    fields["worker_tag"] = main.worker_tag
    fields["stop"] = []
    fields["continuation"] = (main.continuation or "") + continuation
    return fields
