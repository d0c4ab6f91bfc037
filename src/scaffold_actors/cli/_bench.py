"""``scaffold bench``: a method over a JSONL dataset, with incremental results,
resume, a summary, and comparisons of several methods."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import anyio
import anyio.to_thread
import attrs

from .. import AsyncScaffoldingLlm
from ..methods import extract_answer, math_equivalent

__all__ = ["Problem", "load_dataset", "percentile", "run_bench", "summarize", "write_comparison"]

BUILTIN = {"arithmetic": "arithmetic.jsonl"}


@attrs.frozen
class Problem:
    index: int
    question: str
    answer: str  # the gold final answer, extracted and normalised


def _gold(raw: Any) -> str:
    text = str(raw).strip()
    return extract_answer(text) or text


def load_dataset(
    path: str,
    question_field: str = "question",
    answer_field: str = "answer",
    limit: int | None = None,
) -> list[Problem]:
    """Problems from a JSONL file (or a built-in set: ``arithmetic``).  GSM8K
    (``#### 42``), MATH (``\\boxed{}`` in the solution) and AIME (a bare integer)
    answers are reduced to the final answer.  Raises ``ValueError`` naming the line
    of a bad record, ``FileNotFoundError`` for a missing file."""
    if path in BUILTIN:
        text = resources.files("scaffold_actors").joinpath("data", BUILTIN[path]).read_text("utf-8")
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"dataset {path!r} does not exist")
        text = p.read_text("utf-8")
    problems: list[Problem] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{lineno}: a record must be a JSON object")
        for field in (question_field, answer_field):
            if field not in record:
                raise ValueError(
                    f"{path}:{lineno}: no field {field!r} (fields: {', '.join(record)}); "
                    "choose with --question-field / --answer-field"
                )
        problems.append(
            Problem(len(problems), str(record[question_field]), _gold(record[answer_field]))
        )
        if limit is not None and len(problems) >= limit:
            break
    if not problems:
        raise ValueError(f"{path}: no problems")
    return problems


def percentile(values: Sequence[float], q: float) -> float:
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text("utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by an interruption: that problem runs again
    return records


def run_bench(
    controller: Any,
    workers: Mapping[str, Any],
    problems: Sequence[Problem],
    *,
    method: str,
    output: Path,
    concurrency: int,
    resume: bool = False,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run ``controller`` on every problem not yet in ``output`` (``resume``),
    ``concurrency`` at a time, appending one JSON line per finished problem
    (flushed, so an interruption loses only the problems in flight).  Blocks
    (runs its own trio loop).  Returns the summary of all records in ``output``."""
    if output.exists() and not resume:
        raise FileExistsError(f"{output} exists: pass --resume to continue it, or remove it")
    done = {r["index"] for r in _read_records(output) if r.get("method") == method}
    todo = [p for p in problems if p.index not in done]
    engine = getattr(workers.get("generation"), "engine", None)
    samples: list[int] = []
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with output.open("a", encoding="utf-8") as sink:
        if output.stat().st_size and not output.read_bytes().endswith(b"\n"):
            sink.write("\n")  # end a line cut by an interruption; it is skipped on reading
        anyio.run(
            _run, controller, workers, todo, method, sink, concurrency, engine, samples, on_done
        )
    wall = time.perf_counter() - started
    records = [r for r in _read_records(output) if r.get("method") == method]
    capacity = getattr(engine, "max_concurrent", None) or getattr(engine, "max_batch_size", None)
    return summarize(
        records, method=method, wall=wall, ran=len(todo), engine_samples=samples, capacity=capacity
    )


async def _run(
    controller: Any,
    workers: Mapping[str, Any],
    todo: Sequence[Problem],
    method: str,
    sink: TextIO,
    concurrency: int,
    engine: Any,
    samples: list[int],
    on_done: Callable[[dict[str, Any]], None] | None,
) -> None:
    async with AsyncScaffoldingLlm(controller, workers, max_in_flight=concurrency) as llm:

        async def one(problem: Problem) -> None:
            t0 = time.perf_counter()
            record: dict[str, Any] = {
                "index": problem.index,
                "method": method,
                "question": problem.question,
                "gold": problem.answer,
            }
            try:
                result = await (await llm.generate_async(problem.question))
                out = result.output
                assert out is not None
                predicted = out.details.get("answer")
                if predicted is None:
                    predicted = extract_answer(out.output_str)
                record.update(
                    predicted=None if predicted is None else str(predicted),
                    correct=predicted is not None
                    and await anyio.to_thread.run_sync(
                        math_equivalent, str(predicted), problem.answer, abandon_on_cancel=True
                    ),
                    output=out.output_str,
                    completion_tokens=result.usage.completion_tokens,
                    prompt_tokens=result.usage.prompt_tokens,
                    details=out.details,
                )
            except Exception as exc:  # recorded; the benchmark goes on
                record.update(
                    predicted=None,
                    correct=False,
                    error=f"{type(exc).__name__}: {exc}",
                    completion_tokens=0,
                    prompt_tokens=0,
                )
            record["latency_s"] = round(time.perf_counter() - t0, 4)
            sink.write(json.dumps(record, default=str) + "\n")
            sink.flush()
            if on_done is not None:
                on_done(record)

        async def sample_engine() -> None:
            while True:
                samples.append(int(getattr(engine, "num_active", 0)))
                await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            if engine is not None:
                tg.start_soon(sample_engine)
            async with anyio.create_task_group() as runs:
                for p in todo:
                    runs.start_soon(one, p)
            tg.cancel_scope.cancel()


def summarize(
    records: Sequence[Mapping[str, Any]],
    *,
    method: str,
    wall: float,
    ran: int,
    engine_samples: Sequence[int] = (),
    capacity: int | None = None,
) -> dict[str, Any]:
    tokens = [float(r.get("completion_tokens", 0)) for r in records]
    latency = [float(r.get("latency_s", 0.0)) for r in records]
    n = len(records)
    correct = sum(1 for r in records if r.get("correct"))
    active = sum(engine_samples) / len(engine_samples) if engine_samples else None
    return {
        "method": method,
        "problems": n,
        "correct": correct,
        "accuracy": round(correct / n, 4) if n else None,
        "errors": sum(1 for r in records if "error" in r),
        "tokens_per_problem": {
            "mean": round(sum(tokens) / n, 1) if n else None,
            "p50": round(percentile(tokens, 50), 1) if n else None,
            "p90": round(percentile(tokens, 90), 1) if n else None,
        },
        "latency_s": {
            q: round(percentile(latency, v), 3) if n else None
            for q, v in (("p50", 50), ("p90", 90), ("p99", 99))
        },
        "this_run": {
            "problems": ran,
            "wall_s": round(wall, 2),
            "problems_per_s": round(ran / wall, 3) if wall > 0 else None,
            "tokens_per_s": round(sum(tokens[-ran:]) / wall, 1) if wall > 0 and ran else None,
        },
        "engine": {
            "active_requests_mean": None if active is None else round(active, 2),
            "capacity": capacity,
            "utilisation": round(active / capacity, 3) if active is not None and capacity else None,
        },
    }


def write_comparison(summaries: Sequence[Mapping[str, Any]], report_dir: Path) -> tuple[Path, Path]:
    """A markdown table and a PNG plot (accuracy vs. tokens per problem)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "| method | problems | accuracy | tokens/problem (mean) | p90 tokens | p50 latency (s) |",
        "|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s['method']} | {s['problems']} | {s['accuracy']:.3f} | {s['tokens_per_problem']['mean']} | "
            f"{s['tokens_per_problem']['p90']} | {s['latency_s']['p50']} |"
        )
    table = report_dir / "comparison.md"
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError(
            "the plot needs matplotlib: pip install 'scaffold-actors[bench]'"
        ) from None
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in summaries:
        x, y = s["tokens_per_problem"]["mean"], s["accuracy"]
        ax.scatter([x], [y], s=60)
        ax.annotate(s["method"], (x, y), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel("generated tokens per problem (mean)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title("accuracy vs. compute")
    fig.tight_layout()
    plot = report_dir / "comparison.png"
    fig.savefig(plot, dpi=120)
    plt.close(fig)
    return table, plot
