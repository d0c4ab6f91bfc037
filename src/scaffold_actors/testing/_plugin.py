"""The pytest plugin of ``scaffold_actors.testing`` (registered as the
``scaffold_actors`` entry point in ``pytest11``, so installing the package is
enough): fixtures that work under pytest-trio and under anyio's plugin."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from ._runtime import LeakError, SimulatedRuntime, simulated_runtime
from ._script import Script


@pytest.fixture
def script() -> Script:
    """A fresh :class:`Script` (no rules, no default: an unexpected prompt fails)."""
    return Script()


@pytest.fixture
def scaffold_runtime(
    script: Script,
) -> Callable[..., AbstractAsyncContextManager[SimulatedRuntime]]:
    """``async with scaffold_runtime(controller) as rt:``: :func:`simulated_runtime`
    answered by this test's ``script`` fixture (another script or text may be
    passed second), leak-checked on leaving."""

    def make(
        controller: Any, answers: Any = None, **options: Any
    ) -> AbstractAsyncContextManager[SimulatedRuntime]:
        return simulated_runtime(controller, script if answers is None else answers, **options)

    return make


@pytest.fixture
def no_thread_leaks() -> Iterator[None]:
    """Fails the test if a thread it started still runs at its end (a runtime or
    an engine thread left open)."""
    before = set(threading.enumerate())
    yield
    extra = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    if extra:
        raise LeakError(f"threads still running after the test: {extra}")


# -- running TensorRT-LLM's own Scaffolding tests through the compat alias ----------

#: top-level packages of TensorRT-LLM's test tree (tests/unittest, tests/integration)
#: that its Scaffolding tests import for models and servers
_TRTLLM_TEST_TREE = frozenset({"utils", "llmapi", "scaffolding", "test_common", "defs"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--trtllm-alias",
        action="store_true",
        default=False,
        help=(
            "run tests written for tensorrt_llm.scaffolding on scaffold_actors.compat "
            "(installs the alias unless the real tensorrt_llm is importable); a test "
            "that needs TensorRT-LLM's source tree is skipped, saying which; mcp 1.x's "
            "FastMCP name is given to mcp 2's MCPServer"
        ),
    )


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("trtllm_alias", default=False):
        return
    from scaffold_actors.compat import install_trtllm_alias

    installed = install_trtllm_alias()
    config.stash[_ALIAS_KEY] = installed
    _install_fastmcp_name()
    config.addinivalue_line("markers", "cpu_only: TensorRT-LLM's marker (no GPU needed)")
    config.addinivalue_line("markers", "disabled: TensorRT-LLM's marker (disabled upstream)")


_ALIAS_KEY = pytest.StashKey[bool]()


def _install_fastmcp_name() -> None:
    """Make ``from mcp.server.fastmcp import FastMCP`` (mcp 1.x, which TensorRT-LLM's
    tests import) name mcp 2's ``MCPServer``, its new name, when mcp 2 is installed
    and lacks the old module.  Only the name: the API behind it is mcp 2's, so a
    test that relies on mcp 1 behaviour still fails, as a failure."""
    import importlib
    import sys
    import types

    try:
        importlib.import_module("mcp.server.fastmcp")
        return  # mcp 1.x: the real one
    except ImportError:
        pass
    try:
        from mcp.server.mcpserver import MCPServer
    except ImportError:
        return  # no mcp: the import error stays the test's
    module = types.ModuleType(
        "mcp.server.fastmcp", "mcp 1.x's name of mcp 2's MCPServer (scaffold_actors --trtllm-alias)"
    )
    module.FastMCP = MCPServer  # type: ignore[attr-defined]
    sys.modules["mcp.server.fastmcp"] = module


def pytest_report_header(config: pytest.Config) -> str | None:
    if _ALIAS_KEY not in config.stash:
        return None
    if config.stash[_ALIAS_KEY]:
        return "tensorrt_llm.scaffolding: scaffold_actors.compat (alias)"
    return "tensorrt_llm.scaffolding: the real TensorRT-LLM (installed; no alias)"


def _skip_reason(exc: BaseException) -> str | None:
    """Why a TensorRT-LLM test cannot run here, if ``exc`` says it needs what
    this machine cannot have; ``None`` for a real failure."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".", 1)[0]
        if top in _TRTLLM_TEST_TREE:
            return f"needs TensorRT-LLM's source tree (its test package {top!r})"
        if exc.name == "mcp.server.fastmcp":
            return "needs an mcp 1.x server API (mcp.server.fastmcp; this project uses mcp 2)"
    if isinstance(exc, FileNotFoundError) and exc.filename:
        path = str(exc.filename)
        if "/tensorrt_llm/" in path or "/examples/" in path:
            return f"needs TensorRT-LLM's source tree ({path} is not there)"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    report = yield
    if (
        _ALIAS_KEY in collector.config.stash
        and report.failed
        and isinstance(collector, pytest.Module)
    ):
        exc = _collect_error(collector)
        reason = None if exc is None else _skip_reason(exc)
        if reason is not None:
            report.outcome = "skipped"
            report.longrepr = (str(collector.path), 0, f"Skipped: {reason}")
    return report


def _collect_error(module: pytest.Module) -> BaseException | None:
    try:
        module.obj  # noqa: B018 - imports the module (cached by pytest)
    except BaseException as exc:  # (the import error the report was made from)
        cause = exc.__cause__ or exc.__context__
        return cause if isinstance(cause, ImportError) and not isinstance(exc, ImportError) else exc
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if (
        _ALIAS_KEY in item.config.stash
        and report.failed
        and call.excinfo is not None
        and (reason := _skip_reason(call.excinfo.value)) is not None
    ):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {reason}")
    return report
