"""The ``scaffold`` command line."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from engine_bridge import EngineError, InvalidRequestError, SamplingParams

from ._engine_worker import EngineWorker
from ._sync import ScaffoldingLlm
from .methods import MajorityVote, Sampler

METHODS = ("cot", "majority-vote")


def _build_method(method: str, samples: int, max_tokens: int, temperature: float) -> Any:
    sampler = Sampler(max_tokens=max_tokens, temperature=temperature)
    if method == "cot":
        return sampler
    return MajorityVote(sampler, samples=samples)


def _build_engine(engine: str, model: str | None) -> Any:
    if engine == "simulated":
        from engine_bridge import SimulatedEngine

        return SimulatedEngine()
    from transformers.utils import logging as hf_logging

    from engine_bridge import HFEngine

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    return HFEngine(model)


@click.group()
@click.version_option(package_name="scaffold-actors")
def main() -> None:
    """Inference-time compute methods over LLMs."""


@main.command()
@click.argument("question")
@click.option("--method", type=click.Choice(METHODS), default="majority-vote", show_default=True)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="samples to vote over",
)
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.7, show_default=True)
@click.option(
    "--engine",
    type=click.Choice(["hf", "simulated"]),
    default="hf",
    show_default=True,
    help="hf: transformers on the CPU/GPU; simulated: no model at all",
)
@click.option(
    "--model", type=click.Path(), default=None, help="model folder (default: embedded SmolLM2-135M)"
)
@click.option("--json", "as_json", is_flag=True, help="print a machine-readable result")
def run(
    question: str,
    method: str,
    samples: int,
    max_tokens: int,
    temperature: float,
    engine: str,
    model: str | None,
    as_json: bool,
) -> None:
    """Answer QUESTION with an inference-time compute method."""
    try:
        controller = _build_method(method, samples, max_tokens, temperature)
        worker = EngineWorker(
            _build_engine(engine, model), default_params=SamplingParams(max_tokens=max_tokens)
        )
        start = time.perf_counter()
        if not as_json:
            click.echo(f"loading {engine} engine...", err=True)
        with ScaffoldingLlm(controller, {"generation": worker}) as llm:
            loaded = time.perf_counter()
            result = llm.generate(question)
        done = time.perf_counter()
    except (InvalidRequestError, FileNotFoundError, EngineError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    out = result.output
    payload = {
        "question": question,
        "method": method,
        "answer": out.details.get("answer", out.output_str),
        "output": out.output_str,
        "details": dict(out.details),
        "usage": {
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
            "tasks": result.usage.tasks,
        },
        "seconds": {"load": round(loaded - start, 2), "generate": round(done - loaded, 2)},
    }
    if as_json:
        click.echo(json.dumps(payload))
        return
    click.echo(out.output_str)
    if "votes" in out.details:
        click.echo(f"\nanswer: {payload['answer']}   votes: {out.details['votes']}")
    click.echo(
        f"tokens: {result.usage.completion_tokens} generated in {result.usage.tasks} task(s), "
        f"{payload['seconds']['generate']} s (model load {payload['seconds']['load']} s)",
        err=True,
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
