"""The seams between the packages hold: read from the source's import statements.

* ``engine_bridge`` (engines) never imports ``scaffold_actors`` (the framework);
* the framework never imports its application layer (``scaffold_actors.cli``);
* the application layer uses only the framework's public names
  (``scaffold_actors``, ``scaffold_actors.methods``, ``scaffold_actors.compat``);
* no module imports a private module (``_x``) of the other package;
* no code writes into a task's ``__dict__`` to pass things to a handler (the
  run context, :func:`task_context`, carries them).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PUBLIC_FRAMEWORK = {"scaffold_actors", "scaffold_actors.methods", "scaffold_actors.compat"}


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), ast.parse(path.read_text(), str(path))


def imports(name: str, tree: ast.Module) -> Iterator[str]:
    """Absolute names of the modules ``name`` imports (``from x import y`` counts
    ``x`` and, when ``x.y`` is a module, ``x.y``)."""
    package = name.split(".") if (SRC / Path(*name.split("."))).is_dir() else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            yield target
            for a in node.names:
                sub = f"{target}.{a.name}"
                if (SRC / Path(*sub.split("."))).is_dir() or (
                    SRC / Path(*sub.split("."))
                ).with_suffix(".py").exists():
                    yield sub


def test_every_import_respects_the_layers() -> None:
    wrong: list[str] = []
    for name, tree in modules():
        top = name.split(".")[0]
        in_cli = name.startswith("scaffold_actors.cli")
        for target in imports(name, tree):
            other = target.split(".")[0]
            if top == "engine_bridge" and other == "scaffold_actors":
                wrong.append(f"{name} imports {target} (engines import no framework)")
            if top != other and other in ("engine_bridge", "scaffold_actors"):
                if any(p.startswith("_") for p in target.split(".")[1:]):
                    wrong.append(f"{name} imports the private {target}")
            if top == "scaffold_actors" and not in_cli and target.startswith("scaffold_actors.cli"):
                wrong.append(f"{name} imports the application layer ({target})")
            if (
                in_cli
                and other == "scaffold_actors"
                and not target.startswith("scaffold_actors.cli")
            ):
                if target not in PUBLIC_FRAMEWORK:
                    wrong.append(f"{name} imports {target}, not the framework's public API")
    assert wrong == []


def test_no_task_dict_side_channels() -> None:
    found = []
    for name, tree in modules():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "__dict__"
                and isinstance(node.value, ast.Name)
                and node.value.id in ("task", "t")
            ):
                found.append(f"{name}:{node.lineno}")
    assert found == []


def test_the_checks_see_what_they_must_refuse() -> None:
    """The import reader resolves relative imports (else the layer test could not fail)."""
    tree = ast.parse("from .. import EngineWorker\nfrom .._context import RequestContext\n")
    got = set(imports("scaffold_actors.cli._main", tree))
    assert {"scaffold_actors", "scaffold_actors._context"} <= got
