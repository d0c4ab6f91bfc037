"""Every Python block of docs/ holds: it parses (top-level ``await`` / ``async
with`` allowed, as in a notebook or an ``asyncio`` REPL), and every name it imports
from our packages exists.  Many blocks are fragments over a user's model or server
(``HFEngine("/models/...")``), so they cannot all run here; the ones that are whole
programs run elsewhere: docs/testing.md by tests/test_testing_kit.py, the README's by
tests/test_readme.py, the examples' outputs by tests/test_examples.py."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
from helpers import ServeProcess

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCKS = [
    (f"{path.relative_to(DOCS)}#{i}", code)
    for path in sorted(DOCS.rglob("*.md"))
    for i, code in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S))
]
OURS = ("scaffold_actors", "engine_bridge")


def test_the_docs_have_python_blocks() -> None:
    assert len(BLOCKS) >= 20


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_a_docs_block_parses_and_its_imports_exist(where: str, code: str) -> None:
    try:
        tree = compile(code, where, "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError as e:
        pytest.fail(f"{where}: {e}")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in OURS:
            module = importlib.import_module(node.module or "")
            missing = [a.name for a in node.names if not hasattr(module, a.name)]
            assert not missing, f"{where}: {node.module} has no {', '.join(missing)}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in OURS:
                    importlib.import_module(alias.name)


def _block(doc: str, first_line: str) -> str:
    """The Python block of ``docs/doc`` whose first line is ``first_line``."""
    for code in re.findall(r"```python\n(.*?)```", (DOCS / doc).read_text(), re.S):
        if code.startswith(first_line):
            return code
    raise AssertionError(f"docs/{doc} has no block starting {first_line!r}")


def test_the_mcp_example_runs_as_written_and_prints_what_the_docs_say(tmp_path: Path) -> None:
    """docs/mcp.md's server and client, written to files as the docs name them
    and run: the output is the block the docs show after "It prints"."""
    pytest.importorskip("mcp")
    import subprocess
    import sys

    (tmp_path / "calc_server.py").write_text(_block("mcp.md", "# calc_server.py"))
    (tmp_path / "calc_client.py").write_text(_block("mcp.md", "# calc_client.py"))
    text = (DOCS / "mcp.md").read_text()
    said = re.search(r"It prints:\n\n```\n(.*?)```", text, re.S)
    assert said is not None
    p = subprocess.run(
        [sys.executable, "calc_client.py"], cwd=tmp_path, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout == said.group(1)



@pytest.mark.slow_model
def test_the_mcp_agent_example_calls_the_tool_as_the_docs_say(tmp_path: Path) -> None:
    """docs/mcp.md's agent on the embedded model (greedy): it calls the server's
    ``add`` and prints what the docs show after "It prints (greedy"."""
    pytest.importorskip("mcp")
    pytest.importorskip("transformers")
    import subprocess
    import sys

    (tmp_path / "calc_server.py").write_text(_block("mcp.md", "# calc_server.py"))
    (tmp_path / "calc_agent.py").write_text(_block("mcp.md", "# calc_agent.py"))
    said = re.search(
        r"It prints \(greedy[^)]*\):\n\n```\n(.*?)```", (DOCS / "mcp.md").read_text(), re.S
    )
    assert said is not None
    p = subprocess.run(
        [sys.executable, "calc_agent.py"], cwd=tmp_path, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout == said.group(1)

@pytest.mark.slow_model
def test_the_serve_example_runs_as_written_and_answers_right(tmp_path: Path) -> None:
    """docs/serve.md: its first command (on a free port instead of 8000, the only
    change) and its client block through the official openai client, as
    written: the chat about 12 + 7 answers 19 with the votes the docs show the
    form of."""
    pytest.importorskip("openai")
    pytest.importorskip("starlette")
    import json
    import shlex
    import subprocess
    import sys

    text = (DOCS / "serve.md").read_text()
    found = re.search(r"```bash\n(scaffold serve [^\n#]*?)\s+# embedded model\n", text)
    assert found is not None, "docs/serve.md's first command"
    args = shlex.split(found.group(1))
    assert args[:2] == ["scaffold", "serve"] and "--port" in args
    i = args.index("--port")
    del args[i : i + 2]  # (a free port instead of 8000, the only change)
    server = ServeProcess(*args[2:])
    port = server.port
    try:
        client = _block("serve.md", "from openai import OpenAI")
        script = tmp_path / "client.py"
        script.write_text(client.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
        p = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=600
        )
        assert p.returncode == 0, p.stderr[-3000:]
        content, details = p.stdout.rstrip("\n").split("\n", 1)
        scaffold = ast.literal_eval(details)  # the dict as Python prints it
        assert scaffold["answer"] == "19", p.stdout
        assert "19" in content
        assert max(scaffold["votes"].values()) > sum(scaffold["votes"].values()) / 2
        said = re.search(r"It prints \(.*?\):\n\n```\n(.*?)```", text, re.S)
        assert said is not None and "'answer': '19'" in said.group(1)
        json.dumps(scaffold)  # plain data
    finally:
        server.stop()


def _documented_commands() -> list[tuple[str, str]]:
    """Every ``scaffold ...`` command line in a bash block of the README and
    docs/ (line continuations joined; comments, pipes and ``$ `` prompts cut)."""
    found = []
    for path in [DOCS.parent / "README.md", *sorted(DOCS.rglob("*.md"))]:
        for block in re.findall(r"```(?:bash|console|sh)\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip().removeprefix("$ ")
                m = re.search(r"(?:^|&& )(scaffold \S.*?)\s*(?:$| #| \|)", line)
                if m and not m.group(1).endswith("..."):  # (a sketch, not a command)
                    found.append((path.name, m.group(1)))
    return found


COMMANDS = _documented_commands()


def test_the_docs_have_scaffold_commands() -> None:
    assert len(COMMANDS) >= 15


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[c for _, c in COMMANDS])
def test_a_documented_command_is_one_the_cli_takes(where: str, command: str) -> None:
    """Each documented command parses as written: its subcommand and options
    exist and their values have the right types, and for run and serve the
    method and its -p parameters exist (what a renamed option or parameter
    would break).  Nothing runs."""
    import shlex

    import click

    from scaffold_actors.cli import main
    from scaffold_actors.cli._main import parse_params
    from scaffold_actors.cli._registry import METHODS, build_method

    args = shlex.split(command.replace('"$(scaffold cache --path)"', "MODEL"))[1:]
    name, rest = args[0], args[1:]
    parent = click.Context(main, info_name="scaffold")
    sub = main.get_command(parent, name)
    assert sub is not None, f"{where}: no subcommand {name!r}"
    with parent:
        try:
            sub_ctx = sub.make_context(name, rest, parent=parent)
        except click.UsageError as e:
            pytest.fail(f"{where}: `{command}`: {e.format_message()}")
        params = sub_ctx.params
        if name == "bench":
            compare = params.get("compare") or params["method"]
            names = list(METHODS) if compare == "all" else compare.split(",")
            assert set(names) <= set(METHODS), f"{where}: `{command}`"
        if name in ("run", "serve"):
            build_method(
                params["method"],
                samples=params.get("samples"),
                max_tokens=params.get("max_tokens"),
                params=parse_params(params["params"]),
            )


@pytest.mark.slow_model
@pytest.mark.parametrize(
    "command",
    [c for where, c in COMMANDS if where == "README.md" and c.startswith(("scaffold run", "scaffold methods"))],
)
def test_the_readmes_run_commands_run_as_written(command: str) -> None:
    """The README's `scaffold run` and `scaffold methods` commands, run as
    written on the embedded model: each ends with an answer line that has an
    answer (the 135M model's, right or wrong), never "none found"."""
    import shlex
    import subprocess
    import sys

    args = shlex.split(command)[1:]
    p = subprocess.run(
        [sys.executable, "-m", "scaffold_actors.cli", *args],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    if args[0] == "methods":
        assert "majority-vote" in p.stdout and "dynasor" in p.stdout
        return
    answer = [line for line in p.stdout.splitlines() if line.startswith("answer: ")]
    assert answer, p.stdout[-2000:]
    assert not answer[-1].startswith(("answer: none", "answer: \n")), p.stdout[-2000:]
