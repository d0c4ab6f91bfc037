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
