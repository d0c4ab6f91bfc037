"""``scaffold bench``: datasets, incremental results, resume, summaries, comparisons."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scaffold_actors.cli import load_dataset
from scaffold_actors.cli._bench import (
    accuracy_interval,
    compare,
    paired_difference,
    pareto_front,
    percentile,
    summarize,
)
from scaffold_actors.cli._registry import METHODS

ROOT = Path(__file__).resolve().parent.parent


def scaffold(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scaffold_actors.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def write(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_gsm8k_math_and_aime_answers(tmp_path: Path) -> None:
    data = write(
        tmp_path / "mixed.jsonl",
        [
            {"question": "q1", "answer": "She has 3 + 4 = 7 apples.\n#### 7"},
            {"question": "q2", "answer": "So the result is $\\boxed{\\frac{1}{2}}$."},
            {"question": "q3", "answer": 204},
        ],
    )
    assert [p.answer for p in load_dataset(str(data))] == ["7", "\\frac{1}{2}", "204"]
    other = write(tmp_path / "math.jsonl", [{"problem": "p", "solution": "\\boxed{5}"}])
    assert load_dataset(str(other), "problem", "solution")[0].answer == "5"
    assert len(load_dataset("arithmetic")) == 17  # the shipped set


def test_bad_datasets_are_named_precisely(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "1"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_dataset(str(bad))
    with pytest.raises(ValueError, match=r":1: no field 'problem' \(fields: question, answer\)"):
        load_dataset(str(bad), question_field="problem")


def test_summary_statistics() -> None:
    records = [
        {"correct": True, "completion_tokens": 10, "latency_s": 1.0},
        {"correct": False, "completion_tokens": 30, "latency_s": 3.0},
        {"correct": True, "completion_tokens": 20, "latency_s": 2.0, "error": "x"},
    ]
    s = summarize(records, method="m", wall=2.0, ran=3, engine_samples=[2, 4], capacity=6)
    assert s["accuracy"] == pytest.approx(2 / 3, abs=1e-4) and s["errors"] == 1
    assert s["tokens_per_problem"] == {"mean": 20.0, "p50": 20.0, "p90": 28.0}
    assert s["latency_s"]["p50"] == 2.0 and s["this_run"]["problems_per_s"] == 1.5
    assert s["engine"] == {"active_requests_mean": 3.0, "capacity": 6, "utilisation": 0.5}
    assert percentile([1.0], 90) == 1.0


def test_bench_writes_results_resumes_and_refuses_to_overwrite(tmp_path: Path) -> None:
    data = write(
        tmp_path / "d.jsonl",
        [{"question": f"What is {i} + 0?", "answer": str(i)} for i in range(6)],
    )
    common = ["bench", "--dataset", str(data), "--engine", "simulated", "--samples", "3", "--json"]
    p = scaffold(*common, "--limit", "2", "--output", "out.jsonl", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    first = json.loads(p.stdout)["summaries"][0]
    assert first["problems"] == 2 and first["this_run"]["problems"] == 2
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(x)["index"] for x in sorted(lines)] != [] and len(lines) == 2
    # an interrupted run leaves a cut line: that problem runs again on resume
    with (tmp_path / "out.jsonl").open("a") as f:
        f.write('{"index": 2, "method": "majority-vote", "corr')
    p = scaffold(*common, "--output", "out.jsonl", "--resume", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)["summaries"][0]
    assert s["problems"] == 6 and s["this_run"]["problems"] == 4
    record = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[-1])
    assert {
        "index",
        "question",
        "gold",
        "predicted",
        "correct",
        "completion_tokens",
        "latency_s",
    } <= set(record)
    assert s["engine"]["capacity"] == 256 and s["tokens_per_problem"]["mean"] > 0
    p = scaffold(*common, "--output", "out.jsonl", cwd=tmp_path)
    assert (
        p.returncode == 1
        and p.stderr.strip()
        == "Error: out.jsonl exists: pass --resume to continue it, or remove it"
    )
    # a run interrupted before its first problem leaves an empty file: no refusal
    (tmp_path / "empty.jsonl").write_text("")
    p = scaffold(*common, "--output", "empty.jsonl", cwd=tmp_path)
    assert p.returncode == 0, p.stderr


def test_bench_compare_all_ranks_every_method_with_intervals(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("scipy")
    p = scaffold(
        "bench", "--dataset", "arithmetic", "--limit", "3", "--engine", "simulated",
        "--compare", "all", "--samples", "2", "-p", "max_steps=1", "--output", "r.jsonl",
        "--report-dir", "rep", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)["report"]
    ranking = report["ranking"]
    assert {r["method"] for r in ranking} == set(METHODS)  # every method ran
    assert all(r["problems"] == 3 and len(r["accuracy_95"]) == 2 for r in ranking)
    keys = [(-r["accuracy"], r["tokens_mean"]) for r in ranking]
    assert keys == sorted(keys)  # best accuracy first, fewer tokens among equals
    assert all("vs_top" in r for r in ranking[1:]) and "vs_top" not in ranking[0]
    table = (tmp_path / "rep" / "comparison.md").read_text().splitlines()
    assert table[0].startswith("| rank | method | accuracy | 95% interval |")
    assert len(table) == 2 + len(METHODS)
    assert (tmp_path / "rep" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "r.cot.jsonl").exists() and (tmp_path / "r.mcts.jsonl").exists()
    steps = [json.loads(x)["details"]["steps"] for x in (tmp_path / "r.mcts.jsonl").open()]
    assert steps and all(s <= 1 for s in steps)  # -p max_steps=1 reached every tree search
    bad = scaffold(
        "bench", "--dataset", "arithmetic", "--engine", "simulated", "--compare", "cot,dynasor",
        "-p", "max_steps=1", cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.strip() == "Error: no compared method takes parameter(s) max_steps"


def test_bench_compare_names_a_missing_extra_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from click.testing import CliRunner

    from scaffold_actors.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a)
    )
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(
        main, ["bench", "--dataset", "arithmetic", "--engine", "simulated", "--compare", "all"]
    )
    assert r.exit_code == 1
    assert "--compare needs scipy for the report: pip install 'scaffold-actors[bench]'" in r.output
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written


def record(index: int, correct: bool) -> dict[str, object]:
    return {"index": index, "correct": correct}


def summary(method: str, correct: int, n: int, tokens: float) -> dict[str, object]:
    return {
        "method": method,
        "problems": n,
        "correct": correct,
        "accuracy": correct / n,
        "tokens_per_problem": {"mean": tokens, "p90": tokens},
        "latency_s": {"p50": 1.0},
    }


def test_comparison_intervals_pareto_front_and_paired_differences() -> None:
    pytest.importorskip("scipy")
    n = 40
    # "vote" is right on 30 problems, "cot" on 10 of those same ones; "wide" as
    # "vote" but at more tokens; "cheap" is never right but costs nothing
    records = {
        "vote": [record(i, i < 30) for i in range(n)],
        "cot": [record(i, i < 10) for i in range(n)],
        "wide": [record(i, i < 30) for i in range(n)],
        "cheap": [record(i, False) for i in range(n)],
    }
    summaries = [
        summary("cot", 10, n, 30.0),
        summary("wide", 30, n, 500.0),
        summary("vote", 30, n, 200.0),
        summary("cheap", 0, n, 1.0),
    ]
    rows = compare(summaries, records)
    assert [r["method"] for r in rows] == ["vote", "wide", "cot", "cheap"]
    assert {r["method"] for r in rows if r["pareto"]} == {"vote", "cot", "cheap"}
    assert rows[0]["accuracy_95"] == pytest.approx([0.5981, 0.8581], abs=1e-4)  # Wilson
    assert accuracy_interval(30, 40) == pytest.approx((0.5981, 0.8581), abs=1e-4)
    cot = rows[2]["vs_top"]
    assert cot["difference"] == -0.5 and cot["difference_95"][1] < 0  # a real difference
    wide = rows[1]["vs_top"]
    assert wide["difference"] == 0 and wide["difference_95"] == [0, 0]  # same answers
    # a difference the problems do not support: one problem of 40
    d, dlo, dhi = paired_difference([True] + [False] * 39, [False] * 40)
    assert d == 0.025 and dlo <= 0 < dhi
    assert pareto_front({"a": (1, 0.5), "b": (1, 0.5)}) == {"a", "b"}  # ties both stay
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([True], [True, False])


def test_ctrl_c_stops_the_bench_with_one_line_and_resume_goes_on(tmp_path: Path) -> None:
    """A real SIGINT mid-run: exit 130 at once, one line saying what is saved
    and how to go on; --resume then says how many problems were done."""
    import signal
    import time

    out = tmp_path / "r.jsonl"
    args = [
        sys.executable, "-m", "scaffold_actors.cli", "bench", "--dataset", "arithmetic-all",
        "--engine", "simulated", "--simulated-step-seconds", "0.2", "--concurrency", "1",
        "--output", "r.jsonl",
    ]  # fmt: skip
    # one problem at a time, so the saved records are the first problems and
    # "--limit saved" below names exactly them (with two at a time, problem 1
    # may finish first and the resumed first problem was never done)
    p = subprocess.Popen(
        args,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job ignores SIGINT and its children inherit that:
        # give the child Python's own Ctrl-C back, however the suite was started
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler),
    )
    deadline = time.monotonic() + 120  # a hang guard, not a budget: we wait for a result
    while not (out.exists() and out.read_text().count("\n") >= 1):
        assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.stderr else ""
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    saved = sum(1 for line in out.read_text().splitlines() if line.strip())
    assert err.strip() == (
        f"interrupted: {saved} of 60 problems of majority-vote are saved in r.jsonl; "
        "run the same command with --resume to go on"
    )
    again = scaffold(*args[3:], "--resume", "--limit", str(saved), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"resuming majority-vote: {saved} of {saved} problems already done" in again.stderr


def test_bench_in_a_pipe_says_its_progress_in_plain_lines(tmp_path: Path) -> None:
    """Not on a terminal (here: a pipe) the bar becomes plain lines on stderr,
    the last one when every problem is done."""
    data = write(
        tmp_path / "d.jsonl", [{"question": f"What is {i} + 0?", "answer": str(i)} for i in range(3)]
    )
    p = scaffold("bench", "--dataset", str(data), "--engine", "simulated", "--samples", "2", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = [x for x in p.stderr.splitlines() if "problems, accuracy" in x]
    assert lines and lines[-1].startswith("majority-vote: 3/3 problems, accuracy ")
