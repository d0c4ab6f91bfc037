"""``scaffold bench``: a method over a JSONL dataset, with incremental results,
resume, a summary, and comparisons of several methods."""

from __future__ import annotations

import importlib.util
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
from ..methods import extract_answer, math_equivalent, sample_answer

__all__ = [
    "Problem",
    "accuracy_interval",
    "compare",
    "load_dataset",
    "paired_difference",
    "pareto_front",
    "percentile",
    "read_records",
    "run_bench",
    "summarize",
    "write_comparison",
]

BUILTIN = {"arithmetic": "arithmetic.jsonl", "arithmetic-all": "arithmetic-all.jsonl"}


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


def read_records(path: Path) -> list[dict[str, Any]]:
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
    if output.exists() and output.stat().st_size and not resume:  # (an empty one: nothing ran)
        raise FileExistsError(f"{output} exists: pass --resume to continue it, or remove it")
    done = {r["index"] for r in read_records(output) if r.get("method") == method}
    todo = [p for p in problems if p.index not in done]
    engine = getattr(workers.get("generation"), "engine", None)
    samples: list[int] = []
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with output.open("a", encoding="utf-8") as sink:
        if output.stat().st_size and not output.read_bytes().endswith(b"\n"):
            sink.write("\n")  # end a line cut by an interruption; it is skipped on reading
        if todo:  # nothing left: the engine is not started at all
            anyio.run(
                _run, controller, workers, todo, method, sink, concurrency, engine, samples, on_done
            )
    wall = time.perf_counter() - started
    records = [r for r in read_records(output) if r.get("method") == method]
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
                if predicted is None and "answer" not in out.details:
                    # one sample: cut by max_tokens, only an answer it boxed counts
                    predicted = sample_answer(out.output_str, out.finish_reason)
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
    interval = None
    if n and importlib.util.find_spec("scipy") is not None:  # the bench extra
        interval = [round(x, 4) for x in accuracy_interval(correct, n)]
    return {
        "method": method,
        "problems": n,
        "correct": correct,
        "accuracy": round(correct / n, 4) if n else None,
        "accuracy_95": interval,
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


def accuracy_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of an accuracy of ``correct`` out of ``n``
    (scipy's ``binomtest``)."""
    from scipy.stats import binomtest

    ci = binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def paired_difference(
    a: Sequence[bool], b: Sequence[bool], confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Accuracy of ``a`` minus that of ``b`` on the same problems (``a[i]`` and
    ``b[i]`` are one problem), with a paired bootstrap interval (scipy's
    ``bootstrap``, percentile, 9,999 resamples, seeded: the same figures every
    time).  An interval that excludes 0 is a difference the problems support."""
    if len(a) != len(b) or not a:
        raise ValueError("paired_difference needs two equally long, non-empty lists")
    import numpy as np
    from scipy.stats import bootstrap

    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    diff = float(x.mean() - y.mean())
    if np.all(x - y == x[0] - y[0]):  # one value: no spread to resample
        return diff, diff, diff
    res = bootstrap(
        (x, y),
        lambda u, v, axis: u.mean(axis=axis) - v.mean(axis=axis),
        paired=True,
        vectorized=True,
        confidence_level=confidence,
        n_resamples=9999,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return diff, float(res.confidence_interval.low), float(res.confidence_interval.high)


def pareto_front(points: Mapping[str, tuple[float, float]]) -> set[str]:
    """The names whose (tokens, accuracy) no other point beats: none has at most
    the tokens and at least the accuracy, one of them strictly."""
    front = set()
    for name, (t, acc) in points.items():
        if not any(
            (t2 <= t and a2 >= acc) and (t2 < t or a2 > acc)
            for other, (t2, a2) in points.items()
            if other != name
        ):
            front.add(name)
    return front


def _fmt_interval(lo: float, hi: float) -> str:
    return f"[{lo:.2f}, {hi:.2f}]"


def compare(
    summaries: Sequence[Mapping[str, Any]], records: Mapping[str, Sequence[Mapping[str, Any]]]
) -> list[dict[str, Any]]:
    """The comparison rows, best accuracy first (fewer tokens first among equals):
    each method's accuracy with its 95% interval, its tokens, whether it is on
    the accuracy-vs-tokens Pareto front, and its paired difference from the top
    method on the problems both answered (95% bootstrap interval)."""
    ranked = sorted(
        summaries, key=lambda s: (-(s["accuracy"] or 0.0), s["tokens_per_problem"]["mean"] or 0.0)
    )
    front = pareto_front(
        {
            s["method"]: (s["tokens_per_problem"]["mean"] or 0.0, s["accuracy"] or 0.0)
            for s in ranked
        }
    )
    by_index = {
        m: {int(r["index"]): bool(r.get("correct")) for r in recs} for m, recs in records.items()
    }
    top = ranked[0]["method"]
    rows = []
    for s in ranked:
        m = s["method"]
        lo, hi = accuracy_interval(s["correct"], s["problems"])
        row: dict[str, Any] = {
            "method": m,
            "problems": s["problems"],
            "correct": s["correct"],
            "accuracy": s["accuracy"],
            "accuracy_95": [round(lo, 4), round(hi, 4)],
            "tokens_mean": s["tokens_per_problem"]["mean"],
            "tokens_p90": s["tokens_per_problem"]["p90"],
            "latency_p50_s": s["latency_s"]["p50"],
            "pareto": m in front,
        }
        if m != top:
            shared = sorted(set(by_index[m]) & set(by_index[top]))
            if shared:
                d, dlo, dhi = paired_difference(
                    [by_index[m][i] for i in shared], [by_index[top][i] for i in shared]
                )
                row["vs_top"] = {
                    "method": top,
                    "problems": len(shared),
                    "difference": round(d, 4),
                    "difference_95": [round(dlo, 4), round(dhi, 4)],
                }
        rows.append(row)
    return rows


def write_comparison(
    summaries: Sequence[Mapping[str, Any]],
    report_dir: Path,
    records: Mapping[str, Sequence[Mapping[str, Any]]],
) -> tuple[Path, Path, list[dict[str, Any]]]:
    """``comparison.md`` (methods ranked by accuracy, with 95% intervals and the
    paired difference from the top method) and ``comparison.png`` (accuracy vs.
    tokens per problem, error bars, the Pareto front joined) in ``report_dir``;
    returns both paths and the rows (:func:`compare`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError(
            "the plot needs matplotlib: pip install 'scaffold-actors[bench]'"
        ) from None
    rows = compare(summaries, records)
    report_dir.mkdir(parents=True, exist_ok=True)
    top = rows[0]["method"]
    lines = [
        "| rank | method | accuracy | 95% interval | tokens/problem (mean) | p90 tokens "
        f"| p50 latency (s) | Pareto | vs {top} (paired, 95% interval) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rank, r in enumerate(rows, 1):
        vs = r.get("vs_top")
        diff = f"{vs['difference']:+.2f} {_fmt_interval(*vs['difference_95'])}" if vs else "—"
        lines.append(
            f"| {rank} | {r['method']} | {r['accuracy']:.3f} ({r['correct']}/{r['problems']}) | "
            f"{_fmt_interval(*r['accuracy_95'])} | {r['tokens_mean']} | {r['tokens_p90']} | "
            f"{r['latency_p50_s']} | {'yes' if r['pareto'] else ''} | {diff} |"
        )
    table = report_dir / "comparison.md"
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(rows):
        x, y = r["tokens_mean"], r["accuracy"]
        lo, hi = r["accuracy_95"]
        ax.errorbar(
            [x], [y], yerr=[[y - lo], [hi - y]], fmt="o" if r["pareto"] else "s",
            capsize=3, markersize=7 if r["pareto"] else 5,
        )  # fmt: skip
        # labels of neighbours alternate above and below their point
        offset = (6, 4) if i % 2 == 0 else (6, -11)
        ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=offset, fontsize=8)
    front = sorted((r["tokens_mean"], r["accuracy"]) for r in rows if r["pareto"])
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), "--", color="grey", label="Pareto front")
        ax.legend(loc="upper left")
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per problem (mean, log scale)")
    ax.set_ylabel("accuracy (95% interval)")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title("accuracy vs. compute")
    fig.tight_layout()
    plot = report_dir / "comparison.png"
    fig.savefig(plot, dpi=120)
    plt.close(fig)
    return table, plot, rows
