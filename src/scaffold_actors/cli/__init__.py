"""The application layer: the ``scaffold`` command, its method registry, the
``scaffold bench`` runner and the ``scaffold serve`` server.

It is built on the public API of :mod:`scaffold_actors` only; a library user never
needs it.  ``main`` is the console script; the rest is for programs that embed
the server or the benchmark.
"""

from ._bench import Problem, load_dataset, run_bench
from ._main import main
from ._registry import METHODS, MethodSpec, build_method
from ._serve import MethodRouter, create_app

__all__ = [
    "METHODS",
    "MethodRouter",
    "MethodSpec",
    "Problem",
    "build_method",
    "create_app",
    "load_dataset",
    "main",
    "run_bench",
]
