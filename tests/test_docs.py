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
