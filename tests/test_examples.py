"""The examples run as a user would run them (on the simulated engine: no model)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scaffold_actors.cli._registry import METHODS

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )


def run_json(*args: str) -> Any:
    """``scaffold run q --engine simulated --json`` with ``args``; its JSON."""
    p = run("-m", "scaffold_actors.cli", "run", "q", "--engine", "simulated", "--json", *args)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_native_controller_example() -> None:
    p = run("examples/native_controller.py", "What is 3 * 4?", "--simulated")
    assert p.returncode == 0, p.stderr
    assert "\\boxed{" in p.stdout and "'answer':" in p.stdout


def test_ported_trtllm_controller_example() -> None:
    p = run("examples/ported_trtllm_controller.py", "--simulated", "--budget", "40")
    assert p.returncode == 0, p.stderr
    tokens = int(p.stdout.strip().splitlines()[-1].split()[-1])
    assert tokens >= 40  # kept sampling until the budget was spent


def test_overhead_benchmark_prints_json() -> None:
    p = run("benchmarks/overhead.py", "--prompts", "40", "--repeats", "1")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["tasks"] == 320
    assert set(data["tasks_per_second"]) == {"direct", "native", "compat"}
    assert all(v > 0 for v in data["tasks_per_second"].values())
    p = run("benchmarks/overhead.py", "--workload", "instant", "--prompts", "20", "--repeats", "1")
    assert p.returncode == 0, p.stderr
    rates = json.loads(p.stdout)["tasks_per_second"]
    assert {"compat-asyncio", "native-trio", "native-asyncio"} <= set(rates)
    assert {f"floor-{b}-{k}" for b in ("trio", "asyncio", "trio-anyio", "asyncio-anyio")
            for k in ("spawn", "hop")} | {"floor-trio-batch", "floor-asyncio-batch"} <= set(rates)  # fmt: skip
    assert all(v > 0 for v in rates.values())
    p = run(
        "benchmarks/overhead.py", "--workload", "breakdown", "--prompts", "10", "--repeats", "1"
    )
    assert p.returncode == 0, p.stderr
    shares = json.loads(p.stdout)["per_task_us"]
    assert {
        "vote-trio", "parallel-run-asyncio", "parallel-submit-trio", "floor-trio-hop",
        "floor-asyncio-batch",
    } <= set(shares)  # fmt: skip
    p = run("benchmarks/overhead.py", "--workload", "profile", "--prompts", "10", "--repeats", "1")
    assert p.returncode == 0, p.stderr
    profile = json.loads(p.stdout)
    modes = {"compat-asyncio", "native-trio", "native-asyncio"}
    assert set(profile["per_task_us"]) == set(profile["per_task_us_by_layer"]) == modes
    for mode, layers in profile["per_task_us_by_layer"].items():
        # the layers split the measured time (rounding apart)
        assert abs(sum(layers.values()) - profile["per_task_us"][mode]) < 1.0
        assert "worker actor: runner, hand-off, slot, cancel scope" in layers
    p = run(
        "benchmarks/overhead.py", "--workload", "instant", "--prompts", "10", "--repeats", "1",
        "--gc-off",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["gc_off"] is True


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instruction_counts_print_json() -> None:
    p = run("benchmarks/instructions.py", "--mode", "compat", "--prompts", "5")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["prompts"] == 5 and list(data["instructions_per_task"]) == ["compat"]
    # a task costs tens of microseconds: far more than a thousand instructions,
    # far fewer than a hundred million
    assert 1_000 < data["instructions_per_task"]["compat"] < 100_000_000


def test_instruction_counts_name_a_missing_valgrind() -> None:
    p = subprocess.run(
        [sys.executable, "benchmarks/instructions.py", "--prompts", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": ""},
    )  # fmt: skip
    assert p.returncode == 2 and "valgrind is not on the PATH" in p.stderr


def test_method_benchmarks_print_json_on_the_simulated_engine() -> None:
    p = run("benchmarks/early_stopping.py", "--engine", "simulated", "--limit", "2")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert set(data["early_stopping"]) == {
        "LeaderDecided", "Adaptive-Consistency", "ESC (window 4)", "Dynasor-CoT", "DeepConf online",
    }  # fmt: skip
    assert all(c["tokens_per_problem"] > 0 for c in data["configs"].values())
    p = run("benchmarks/self_verify.py", "--engine", "simulated", "--limit", "2")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["problems"] == 2 and data["verdict_tokens"]["completion"] == 2 * 2 * 8
    p = run(
        "benchmarks/vote_defaults.py", "--engine", "simulated", "--limit", "2", "--samples", "3",
        "--temperatures", "0.7,1.0", "--instructions", "cot,none",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert set(data["configs"]) == {"T=0.7 cot", "T=0.7 none", "T=1.0 cot", "T=1.0 none"}
    assert "vs_default" not in data["configs"]["T=0.7 cot"]  # the default is the baseline
    assert all("vs_default" in c for n, c in data["configs"].items() if n != "T=0.7 cot")


def test_http_client_benchmark_prints_json() -> None:
    pytest.importorskip("uvicorn")
    p = run("benchmarks/http_client.py", "--requests", "48", "--in-flight", "48", "--repeats", "1")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["connections_per_client"]["one_pool"] == 48
    assert all(v > 0 for v in data["client_cpu_us_per_request"].values())
    assert data["cpu_ratio_one_pool_vs_sharded"] > 0


def test_cli_rejects_bad_options() -> None:
    p = run("-m", "scaffold_actors.cli", "run", "q", "--samples", "0")
    assert p.returncode == 2 and "Invalid value" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "nope"], "Error: unknown method 'nope'; choose from: cot, majority-vote,"),
        (
            ["--method", "dynasor", "-p", "foo=1"],
            "Error: dynasor: unknown parameter(s) foo; it takes: probe_interval, certainty_window",
        ),
        (
            ["--method", "deepconf", "-p", "mode=sometimes"],
            "Error: 'mode' must be in ('offline', 'online') (got 'sometimes')",
        ),
        (
            ["--method", "dynasor", "-p", "probe_interval=soon"],
            "Error: dynasor: parameter probe_interval must be int, got 'soon'",
        ),
        (
            ["--method", "beam-search", "--reward-model", "/no/such/prm"],
            "Error: reward model path '/no/such/prm' does not exist",
        ),
        (
            ["--engine", "openai"],
            "Error: --engine openai needs --base-url (e.g. http://127.0.0.1:8000/v1)",
        ),
        (["-p", "novalue"], "Invalid value for --param: expected KEY=VALUE, got 'novalue'"),
        (["--devices", "cuda:0,cuda:1"], "Error: --devices is for --engine hf"),
        (["--replicas", "0"], "Invalid value for '--replicas'"),
        (
            ["--engine", "openai", "--base-url", "http://127.0.0.1:9/v1", "--replica-processes"],
            "Error: --replica-processes is for --engine hf or simulated",
        ),
        (
            ["--engine", "hf", "--model", "/no/such/model", "--replica-processes"],
            "Error: model path '/no/such/model' does not exist",
        ),
        (["--engine", "hf", "--devices", "cuda:99"], "Error: --devices cuda:99: this torch"),
        (["--engine", "hf", "--devices", "gpu0"], "Error: --devices gpu0: not a torch device"),
    ],
)
def test_cli_errors_are_one_line(args: list[str], message: str) -> None:
    p = run("-m", "scaffold_actors.cli", "run", "q", "--engine", "simulated", *args)
    assert p.returncode in (1, 2) and "Traceback" not in p.stderr
    assert message in p.stderr


def test_cli_unreachable_server_is_one_line() -> None:
    p = run(
        "-m",
        "scaffold_actors.cli",
        "run",
        "q",
        "--engine",
        "openai",
        "--base-url",
        "http://127.0.0.1:9/v1",
    )
    assert p.returncode == 1 and "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("Error: cannot reach http://127.0.0.1:9/v1")
        and "is the server running?" in last
    )


def test_cli_methods_lists_every_method() -> None:
    p = run("-m", "scaffold_actors.cli", "methods", "--json")
    assert p.returncode == 0, p.stderr
    table = json.loads(p.stdout)
    assert {
        "cot",
        "majority-vote",
        "adaptive-consistency",
        "best-of-n",
        "dynasor",
        "deepconf",
        "beam-search",
        "dvts",
        "best-first",
        "mcts",
    } == set(table)
    assert table["dynasor"]["params"]["probe_interval"] == {
        "type": "int",
        "default": 32,
        "help": "tokens between probes",
    }
    assert table["cot"]["default_samples"] == 1 and not table["cot"]["uses_samples"]
    assert table["majority-vote"]["default_samples"] == 16
    text = run("-m", "scaffold_actors.cli", "methods").stdout
    assert "-p probe_interval=32" in text
    # one sample: no --samples default shown for it
    assert re.search(
        r"cot .*\n +defaults: one sample, --max-tokens \d+ --temperature 0\.7\n", text
    ), text
    # each method's own token limit, stated
    assert all(info["default_max_tokens"] >= 16 for info in table.values())


@pytest.mark.parametrize("method", list(METHODS))
def test_cli_runs_each_method_on_the_simulated_engine(method: str) -> None:
    """Every method runs with no extra files: those that score candidates are
    scored by the generation model itself when no --reward-model is given."""
    p = run(
        "-m",
        "scaffold_actors.cli",
        "run",
        "What is 1+1?",
        "--engine",
        "simulated",
        "--method",
        method,
        "--json",
    )
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["method"] == method and data["usage"]["completion_tokens"] > 0 and data["output"]
    if METHODS[method].uses_reward:  # the self-verification verdicts are tasks too
        assert data["usage"]["tasks"] > data["details"].get("samples_finished", 1)


def test_cli_missing_model_is_one_line() -> None:
    p = run("-m", "scaffold_actors.cli", "run", "q", "--model", "/no/such/dir")
    assert (
        p.returncode == 1 and p.stderr.strip() == "Error: model path '/no/such/dir' does not exist"
    )


def test_votes_default_to_16_samples_and_searches_to_4() -> None:
    """Defaults chosen by measurement: a vote of 4 on the embedded model gave a
    wrong plurality on the README's question, a vote of 16 the right one."""
    assert run_json()["details"]["samples_requested"] == 16
    assert run_json("--method", "best-of-n")["details"]["samples_finished"] == 4
    assert run_json("--samples", "3")["details"]["samples_requested"] == 3


def test_cli_simulated_json() -> None:
    p = run(
        "-m",
        "scaffold_actors.cli",
        "run",
        "What is 1+1?",
        "--engine",
        "simulated",
        "--json",
        "--samples",
        "3",
    )
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["method"] == "majority-vote" and data["usage"]["tasks"] == 3
    assert data["answer"] == data["details"]["answer"]


@pytest.mark.slow_model
def test_cli_runs_the_embedded_model() -> None:
    """The README's first command, shortened: a method on the embedded model, on the CPU."""
    pytest.importorskip("transformers")
    p = run(
        "-m",
        "scaffold_actors.cli",
        "run",
        "What is 2 + 2?",
        "--method",
        "majority-vote",
        "--samples",
        "2",
        "--max-tokens",
        "4",
        "--json",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    data = json.loads(p.stdout)
    assert data["usage"]["tasks"] == 2 and 0 < data["usage"]["completion_tokens"] <= 8
    assert isinstance(data["output"], str)


def test_best_of_n_example() -> None:
    p = run("examples/best_of_n.py", "What is 12 + 7?", "--simulated")
    assert p.returncode == 0, p.stderr
    scores = p.stdout.strip().splitlines()[-1]
    assert scores.startswith("scores: [") and scores.count(",") == 3  # four samples scored


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["examples/self_consistency.py"], "answer=42"),
        (["examples/dynasor_cot.py"], "early_exit=True"),
        (["examples/deepconf.py"], "answer=15"),
        (["examples/deepconf.py", "--mode", "online"], "answer=15"),
        (["examples/tree_search.py", "--search", "beam"], "answer=42"),
        (["examples/tree_search.py", "--search", "dvts"], "answer=42"),
        (["examples/tree_search.py", "--search", "best-first"], "search=best-first"),
        (["examples/tree_search.py", "--search", "mcts"], "search=mcts"),
        (["examples/streaming_budget.py"], "finish_reason=budget tokens=24"),
        (["examples/react_agent.py"], "answer='1048575' turns=2 tool_calls=1 finished=True"),
    ],
)
def test_method_examples(args: list[str], expect: str) -> None:
    p = run(*args, "--simulated")
    assert p.returncode == 0, p.stderr
    assert expect in p.stdout.strip().splitlines()[-1]


@pytest.mark.slow_model
def test_the_react_agent_calls_python_on_the_embedded_model() -> None:
    """The README's agent example on the embedded SmolLM2-135M (greedy): it calls
    the python tool and answers with the tool's result."""
    pytest.importorskip("transformers")
    p = run("examples/react_agent.py")
    assert p.returncode == 0, p.stderr[-2000:]
    assert 'Action Input: {"code": "print(2**20 - 1)"}\nObservation: 1048575' in p.stdout
    assert p.stdout.strip().endswith("answer='1048575' turns=2 tool_calls=1 finished=True")


def test_live_view_line() -> None:
    from scaffold_actors import ScaffoldingOutput, TokenUsage
    from scaffold_actors.cli._main import _live_line

    partial = ScaffoldingOutput(
        "x",
        finished=False,
        details={"votes": {"7": 1, "8": 2}, "samples_finished": 3, "samples_requested": 8},
    )
    line = _live_line(partial, TokenUsage(completion_tokens=120), started=0.0)
    assert line.startswith("samples 3/8 · votes 8: 2, 7: 1 · 120 tokens · ")


@pytest.mark.parametrize(
    ("details", "said"),
    [
        ({"votes": {"19": 2, "20": 1, "7": 1}, "samples_finished": 4}, "plurality: 2 of 4"),
        ({"votes": {"19": 3, "20": 1}, "samples_finished": 4}, "majority: 3 of 4"),
        ({"votes": {"20": 1, "9": 1}, "samples_finished": 4}, "tie between 20, 9: no majority"),
        ({"votes": {}, "samples_finished": 4}, "no answer: none of 4 samples gave an answer"),
        (
            {"votes": {}, "samples_finished": 4, "unanswered": {"empty": 1, "cut_by_length": 3}},
            "(1 empty, 3 cut by --max-tokens before an answer)",
        ),
        ({"votes": {"1": 1.7312345, "2": 0.5}}, "1: 1.73, 2: 0.5   majority: 1.73 of 2.23"),
        ({"votes": {"5": 2}, "samples_finished": 4}, "majority: 2 of 2 answers, 4 samples"),
        (
            {"votes": {"5": 2}, "samples_finished": 4, "unanswered": {"cut_by_length": 2}},
            "(2 cut by --max-tokens before an answer: no vote)",
        ),
    ],
)
def test_the_cli_says_what_a_vote_decided(details: dict[str, object], said: str) -> None:
    from scaffold_actors.cli._main import vote_summary

    assert said in vote_summary(details)


def test_cli_cot_reports_the_answer_not_the_completion() -> None:
    data = run_json("--method", "cot")
    assert data["answer"] and data["answer"] != data["output"] and data["answer"] in data["output"]


def test_cli_refuses_an_empty_question_before_starting_an_engine() -> None:
    p = run("-m", "scaffold_actors.cli", "run", "  ", "--engine", "hf")
    assert p.returncode == 2 and "QUESTION must not be empty" in p.stderr
    assert "starting the" not in p.stderr and "Traceback" not in p.stderr


def test_a_missing_extra_is_named_before_any_engine_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from scaffold_actors.cli._main import EngineOptions, check_engine_options

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "httpx" else real(name, *a)
    )
    with pytest.raises(ValueError, match=r"needs httpx: pip install 'scaffold-actors\[http\]'"):
        check_engine_options(EngineOptions(engine="openai"), [])
    with pytest.raises(ValueError, match=r"scaffold-actors\[hf,server\]"):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
        check_engine_options(EngineOptions(engine="hf", replica_processes=True), [])


def test_cli_seed_draws_the_same_samples_and_help_shows_examples() -> None:
    def votes(seed: str) -> Any:
        return run_json("--samples", "8", "--seed", seed)["details"]["votes"]

    assert votes("1") == votes("1") != votes("2")
    for command in ("run", "bench", "serve", "methods", "port-run", "cache"):
        p = run("-m", "scaffold_actors.cli", command, "--help")
        assert "Example" in p.stdout, command
    top = run("-m", "scaffold_actors.cli", "--help").stdout
    assert re.search(r"\n  bench +Run methods over a dataset: accuracy, tokens, latency\.", top), top
    assert re.search(r"\n  port-run +Run a TensorRT-LLM Scaffolding SCRIPT unchanged", top), top


def test_cli_asks_a_server_the_question_as_a_chat_turn() -> None:
    """As the local engines render a question with their chat template, an
    OpenAI-compatible server gets it as a chat turn (a raw completion on a chat
    model answered empty one-token outputs), unless --raw-completions."""
    from scaffold_actors.cli._main import EngineOptions, build_engine

    url = "http://127.0.0.1:9/v1"
    assert build_engine(EngineOptions(engine="openai", base_url=url)).chat is True
    raw = build_engine(EngineOptions(engine="openai", base_url=url, raw_completions=True))
    assert raw.chat is False
    with pytest.raises(ValueError, match="--raw-completions is for --engine openai"):
        build_engine(EngineOptions(engine="simulated", raw_completions=True))


@pytest.mark.slow_model
def test_cli_cache_names_the_embedded_models_folder_and_a_serve_command(tmp_path: Path) -> None:
    """``scaffold cache``: the conversion cache, the embedded model's folder in it
    (said not converted in an empty cache) and a ``transformers serve`` command;
    ``--path`` prints the folder alone (for ``transformers serve "$(scaffold cache
    --path)"``)."""
    from click.testing import CliRunner

    from engine_bridge import conversion_cache_folder, embedded_model_path
    from scaffold_actors.cli._main import main

    env = {"SCAFFOLD_ACTORS_CACHE": str(tmp_path)}
    folder = conversion_cache_folder(embedded_model_path(), root=tmp_path)
    out = CliRunner().invoke(main, ["cache"], env=env)
    assert out.exit_code == 0, out.output
    assert f"cache folder:   {tmp_path}" in out.output
    assert f"embedded model: {folder}  (not converted yet: scaffold cache --convert)" in out.output
    assert f"transformers serve {folder} --continuous-batching --device cpu" in out.output
    (folder / "config.json").parent.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert f"{folder}  (converted)" in CliRunner().invoke(main, ["cache"], env=env).output
    assert CliRunner().invoke(main, ["cache", "--path"], env=env).output == f"{folder}\n"


def test_the_cli_says_an_unconfirmed_abort_once_and_plainly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import warnings

    from engine_bridge import AbortNotAcknowledgedWarning
    from scaffold_actors.cli._main import _plain_warnings

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # (restored after)
    _plain_warnings()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for key in range(3):
            message = f"did not confirm the abort of request {key}"
            warnings.warn(message, AbortNotAcknowledgedWarning, stacklevel=1)
        warnings.warn("a user's own warning", UserWarning, stacklevel=1)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: did not confirm the abort of request 0 (the machine may be too busy for "
        "the engine; later ones are not shown)",
        "warning: a user's own warning",
    ]


def test_a_long_engine_start_says_it_is_still_going(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not on a terminal, ``scaffold run``'s engine start says so at once and
    then every few seconds until it is up: the body here returns only once the
    second "so far" line was written (a wait on that event, no timing)."""
    import threading

    import click

    from scaffold_actors.cli import _main

    lines: list[str] = []
    two = threading.Event()

    def echo(message: str, err: bool = False) -> None:
        lines.append(message)
        if sum("so far" in x for x in lines) >= 2:
            two.set()

    monkeypatch.setattr(click, "echo", echo)
    monkeypatch.setattr(_main.sys.stderr, "isatty", lambda: False)
    with pytest.raises(KeyError):  # the body's own exception comes back as itself
        with _main._waiting("starting the hf engine", quiet=False, every=0.01):
            assert two.wait(60), lines  # (the bound only keeps a bug from hanging the suite)
            raise KeyError("the body's")
    assert lines[0] == "starting the hf engine..."
    assert lines[1].startswith("starting the hf engine: ") and lines[1].endswith(" s so far")
    assert not [t for t in threading.enumerate() if t.name == "scaffold-waiting"]  # stopped
    lines.clear()
    with _main._waiting("starting", quiet=True, every=0.01):
        pass
    assert lines == []
