from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio.testing

_CACHE_MADE: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """The GGUF conversion cache of the whole run (child processes included) is
    a fresh folder, so the suite neither reads nor writes the user's cache and
    converts the embedded model once.  A ``SCAFFOLD_ACTORS_CACHE`` already set
    is kept (a developer's warm cache)."""
    import os
    import tempfile

    if not os.environ.get("SCAFFOLD_ACTORS_CACHE"):
        _CACHE_MADE.append(tempfile.mkdtemp(prefix="scaffold-actors-cache-"))
        os.environ["SCAFFOLD_ACTORS_CACHE"] = _CACHE_MADE[0]


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    for folder in _CACHE_MADE:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """Public-API tests run on both backends; trio gets an autojumping mock clock."""
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return "asyncio"


@pytest.fixture
def deterministic_scheduling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make trio's run-queue order reproducible.

    Trio shuffles ready tasks on purpose to flush out ordering bugs; its test hook
    ``_ALLOW_DETERMINISTIC_SCHEDULING`` with a seeded RNG fixes that order, which a
    whole-run reproducibility test needs.
    """
    import random

    from trio._core import _run

    monkeypatch.setattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING", True)
    monkeypatch.setattr(_run, "_r", random.Random(0))


def reseed_trio(seed: int = 0) -> None:
    import random

    from trio._core import _run

    _run._r.seed(seed) if isinstance(_run._r, random.Random) else None


#: engine parameters whose tests load the embedded model (in this process, or
#: in a transformers serve child)
_MODEL_ENGINES = frozenset({"hf", "transformers-serve"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every ``async def`` test runs under trio unless it asks for anyio (both
    backends); a test parametrized over an engine that loads the embedded model
    is marked ``slow_model`` (selected at collection, so ``-m`` sees it)."""
    import inspect

    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("make_engine") in _MODEL_ENGINES:
            item.add_marker(pytest.mark.slow_model)
        fn = getattr(item, "function", None)
        if fn is None or not inspect.iscoroutinefunction(fn):
            continue
        if item.get_closest_marker("anyio") is None and item.get_closest_marker("trio") is None:
            item.add_marker(pytest.mark.trio)


@pytest.fixture
def flaky() -> Iterator[Any]:
    """Start tests/flaky_server.py with (failures, mode) on a free loopback port."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    procs: list[subprocess.Popen[bytes]] = []

    def start(failures: int, mode: int | str = 503) -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        script = Path(__file__).parent / "flaky_server.py"
        procs.append(
            subprocess.Popen([sys.executable, str(script), str(port), str(failures), str(mode)])
        )
        deadline = time.monotonic() + 60  # a hang guard: we wait for it to listen
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                return port
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("flaky server did not start")

    yield start
    for p in procs:
        p.kill()
        p.wait(10)
