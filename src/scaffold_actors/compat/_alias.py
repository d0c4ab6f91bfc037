"""``tensorrt_llm.scaffolding`` as an alias of :mod:`scaffold_actors.compat`.

A TensorRT-LLM Scaffolding program or test file imports ``tensorrt_llm.scaffolding``
(and its submodules ``task``, ``controller``, ``worker``, ``contrib.a2a``, ...).
Where the real TensorRT-LLM is not installed, :func:`install_trtllm_alias` makes
those imports resolve to this package, so the program runs with no edit at all
(``scaffold port-run script.py``, ``pytest --trtllm-alias``).  It never shadows a
real install: when ``tensorrt_llm`` can be imported, nothing is installed.

Every submodule of the alias (``tensorrt_llm.scaffolding.task``, ``.worker``,
``.math_utils``, ...) offers the whole public namespace of
:mod:`scaffold_actors.compat`: a name TensorRT-LLM moved between its modules
across releases is found under each of them.  ``tensorrt_llm.scaffolding.contrib.*``
are the real modules of :mod:`scaffold_actors.compat.contrib`.  Anything of
``tensorrt_llm`` outside ``scaffolding`` (the ``LLM`` API, ``llmapi``) is not
provided: importing it raises :class:`ModuleNotFoundError` (or
:class:`ImportError` for a name) saying so.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from typing import Any

__all__ = ["TRTLLMAliasError", "install_trtllm_alias", "real_trtllm_installed"]

_ROOT = "tensorrt_llm"
_PACKAGE = "tensorrt_llm.scaffolding"
_CONTRIB = "tensorrt_llm.scaffolding.contrib"
_MARK = "__scaffold_actors_alias__"

#: submodules that are real modules here (the rest are views of compat)
REAL_SUBMODULES = {
    "load_generation_strategy": "scaffold_actors.compat.load_generation_strategy",
}

#: TensorRT-LLM's Scaffolding submodules (every release's), each a view of compat
SUBMODULES = (
    "benchmark",
    "config",
    "controller",
    "execution_scope",
    "execution_trace",
    "load_generation_strategy",
    "math_utils",
    "mcp_client",
    "pytorch_worker",
    "replay",
    "result",
    "scaffolding_llm",
    "task",
    "task_collection",
    "trace_replay",
    "tree_controllers",
    "utils",
    "worker",
)


class TRTLLMAliasError(ImportError):
    """A part of ``tensorrt_llm`` that the alias does not provide was imported."""


def real_trtllm_installed() -> bool:
    """Whether a real ``tensorrt_llm`` can be imported (the alias is not counted)."""
    module = sys.modules.get(_ROOT)
    if module is not None:
        return not getattr(module, _MARK, False)
    finder = _finder()
    if finder is not None:
        sys.meta_path.remove(finder)
    try:
        return importlib.util.find_spec(_ROOT) is not None
    finally:
        if finder is not None:
            sys.meta_path.insert(0, finder)


def install_trtllm_alias() -> bool:
    """Make ``import tensorrt_llm.scaffolding`` (and its submodules) resolve to
    :mod:`scaffold_actors.compat`, unless the real TensorRT-LLM is installed.

    Returns ``True`` if the alias is in place (installed now or before),
    ``False`` if the real ``tensorrt_llm`` is importable (then nothing is
    changed: a real install is never shadowed).  Idempotent; does not block.
    """
    if _finder() is not None:
        return True
    if real_trtllm_installed():
        return False
    sys.meta_path.insert(0, _AliasFinder())
    return True


def _finder() -> _AliasFinder | None:
    for f in sys.meta_path:
        if isinstance(f, _AliasFinder):
            return f
    return None


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``tensorrt_llm`` and ``tensorrt_llm.scaffolding[.X]``: the root and
    the listed submodules are made here, ``contrib.*`` imported from
    ``scaffold_actors.compat.contrib``."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _ROOT and not fullname.startswith(_ROOT + "."):
            return None
        if fullname.startswith(_PACKAGE + ".") and fullname[len(_PACKAGE) + 1 :] in REAL_SUBMODULES:
            return importlib.util.spec_from_loader(fullname, self, is_package=False)
        if fullname == _CONTRIB or fullname.startswith(_CONTRIB + "."):
            target_name = "scaffold_actors.compat.contrib" + fullname[len(_CONTRIB) :]
            if importlib.util.find_spec(target_name) is None:
                raise ModuleNotFoundError(
                    f"No module named {fullname!r}: scaffold-actors' tensorrt_llm alias has "
                    f"no such contrib module (see docs/porting-from-tensorrt-llm.md)",
                    name=fullname,
                )
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        if fullname in (_ROOT, _PACKAGE):
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        if fullname.startswith(_PACKAGE + "."):
            leaf = fullname[len(_PACKAGE) + 1 :]
            if leaf in SUBMODULES:
                return importlib.util.spec_from_loader(fullname, self, is_package=False)
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: scaffold-actors' tensorrt_llm alias provides "
                f"tensorrt_llm.scaffolding and its submodules {', '.join(SUBMODULES)}",
                name=fullname,
            )
        raise ModuleNotFoundError(
            f"No module named {fullname!r}: scaffold-actors' tensorrt_llm alias provides only "
            "tensorrt_llm.scaffolding; install TensorRT-LLM for the rest",
            name=fullname,
        )

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        name = spec.name
        real = REAL_SUBMODULES.get(name[len(_PACKAGE) + 1 :]) if name.startswith(_PACKAGE) else None
        if real is not None:
            return importlib.import_module(real)
        if name == _CONTRIB or name.startswith(_CONTRIB + "."):
            return importlib.import_module("scaffold_actors.compat.contrib" + name[len(_CONTRIB) :])
        return None  # the default: a new module, filled by exec_module

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__name__
        if name.startswith("scaffold_actors."):
            return  # a contrib module of ours, already executed by its import
        setattr(module, _MARK, True)
        if name == _ROOT:
            module.__getattr__ = _root_getattr  # type: ignore[method-assign]
            return
        from scaffold_actors import compat

        for attr in compat.__all__:
            setattr(module, attr, getattr(compat, attr))
        module.__all__ = list(compat.__all__)  # type: ignore[attr-defined]
        module.__doc__ = f"scaffold-actors' alias of {name} (scaffold_actors.compat)"


def _root_getattr(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    if name == "scaffolding":
        return importlib.import_module(_PACKAGE)
    raise TRTLLMAliasError(
        f"tensorrt_llm.{name} is not provided by scaffold-actors' tensorrt_llm alias "
        "(it provides only tensorrt_llm.scaffolding); install TensorRT-LLM for it"
    )
