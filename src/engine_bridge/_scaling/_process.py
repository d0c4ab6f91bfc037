"""An engine in a child process: ``engine_bridge.openai_server`` on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import IO, Any, Self

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from .._engines._openai import OpenAIEngine
from .._types import EngineClosedError, EngineDelta, EngineError, EngineRequest, KVCacheDrop

__all__ = ["ProcessEngine"]


class ProcessEngine:
    """An engine served by a child process of its own, reached over loopback HTTP.

    ``async with`` runs ``python -m engine_bridge.openai_server`` (the engine kind
    and options given here, on a free loopback port the child picks and reports)
    and talks to it through an :class:`OpenAIEngine`.  The reason to use it:
    transformers' continuous-batching loop is Python-bound, so several
    :class:`HFEngine` replicas in one process share the interpreter lock, while one
    child per GPU does not (``EnginePool([ProcessEngine(device="cuda:0"),
    ProcessEngine(device="cuda:1")])``; docs/scale-out.md has the figures).
    Requests with ``stream=False`` travel as one JSON body each (``stream_all=True``:
    every request streams, as :class:`OpenAIEngine` explains; ``timeout`` and
    ``response_timeout`` are its too).

    Starting blocks (cancellably) until the child's ``/health`` answers, at most
    ``startup_timeout`` seconds; a child that exits or does not come up in time
    raises :class:`EngineError` with the end of its stderr, and is killed.
    Closing closes the client, then stops the child (SIGTERM, SIGKILL after
    ``stop_timeout`` seconds).  A child that dies makes the engine unhealthy, so an
    :class:`EnginePool` takes it out; its requests fail with :class:`EngineError`.

    The child exits on its own if this process dies without closing it (it
    watches its parent), so a killed script leaves no server holding a GPU.

    ``check`` accepts every request the server could (the prompt's length is
    checked by the child, whose 400 is raised as :class:`InvalidRequestError`).
    """

    def __init__(
        self,
        engine: str = "hf",
        *,
        model: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        max_concurrent: int = 64,
        kv_cache_tokens: int | None = 32768,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        startup_timeout: float = 600.0,
        stop_timeout: float = 30.0,
        timeout: float = 60.0,
        response_timeout: float | None = 600.0,
        stream_all: bool = False,
    ) -> None:
        if engine not in ("hf", "simulated"):
            raise ValueError(f"engine must be 'hf' or 'simulated', not {engine!r}")
        if max_concurrent < 1 or startup_timeout <= 0 or stop_timeout <= 0:
            raise ValueError("max_concurrent >= 1, startup_timeout > 0, stop_timeout > 0 required")
        if model is not None and engine == "hf" and not os.path.exists(model):
            raise FileNotFoundError(f"model path {model!r} does not exist")
        self.command = [
            python, "-m", "engine_bridge.openai_server", "--engine", engine,
            "--device", device, "--dtype", dtype, "--max-concurrent", str(max_concurrent),
            "--kv-cache-tokens", str(kv_cache_tokens or 0),
            "--host", "127.0.0.1", "--port", "0",
            *(["--model", model] if model else []), *extra_args,
        ]  # fmt: skip
        self.device = device
        self.env = dict(env) if env is not None else None
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._client_options: dict[str, Any] = {
            # twice the child's batch on the wire: a batch is full and the next
            # requests already wait in the child when one finishes (each is an open
            # connection, so not unbounded); more wait here, in order
            "max_concurrent": max_concurrent * 2,
            "timeout": timeout,
            "response_timeout": response_timeout,
            "stream_all": stream_all,
        }
        self.url: str | None = None  # http://127.0.0.1:PORT/v1 once started
        self._process: anyio.abc.Process | None = None
        self._stderr: IO[bytes] | None = None
        self._client: OpenAIEngine | None = None
        self._last_client: OpenAIEngine | None = None
        self._checker = OpenAIEngine("http://127.0.0.1", "scaffold")  # never started

    def __repr__(self) -> str:
        return f"ProcessEngine(device={self.device!r}, url={self.url!r})"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def completed(self) -> int:
        """Requests finished (by the client of the latest start)."""
        return self._last_client.completed if self._last_client is not None else 0

    @property
    def aborted(self) -> int:
        """Requests left before their end (by the client of the latest start)."""
        return self._last_client.aborted if self._last_client is not None else 0

    @property
    def num_active(self) -> int:
        return self._client.num_active if self._client is not None else 0

    @property
    def healthy(self) -> bool:
        process, client = self._process, self._client
        return (
            process is not None
            and process.returncode is None
            and client is not None
            and client.healthy
        )

    def check(self, request: EngineRequest) -> None:
        self._checker.check(request)

    def count_prompt_tokens(self, request: EngineRequest) -> int:
        return 0  # known to the child only: count_tokens asks it

    async def count_tokens(self, request: EngineRequest) -> int:
        """The child server's count (its ``/tokenize``)."""
        if self._client is None:
            raise EngineClosedError("engine is not running (use `async with engine:`)")
        return await self._client.count_tokens(request)

    async def drop_kv_cache(self, drop: KVCacheDrop) -> int | None:
        """The hint to the child server (its ``/_control/kv_cache/truncate``)."""
        if self._client is None:
            raise EngineClosedError("engine is not running (use `async with engine:`)")
        return await self._client.drop_kv_cache(drop)

    def open_stream(
        self, request: EngineRequest
    ) -> AbstractAsyncContextManager[AsyncIterator[EngineDelta]]:
        if self._client is None:
            raise EngineClosedError("engine is not running (use `async with engine:`)")
        return self._client.open_stream(request)

    async def __aenter__(self) -> Self:
        if self._process is not None:
            raise RuntimeError("ProcessEngine is already running")
        self._stderr = tempfile.TemporaryFile()
        self._process = await anyio.open_process(
            [*self.command, "--parent-pid", str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=self.env,
        )
        try:
            with anyio.fail_after(self.startup_timeout):
                self.url = await self._listening() + "/v1"
                await self._wait_healthy()
            client = OpenAIEngine(self.url, "scaffold", **self._client_options)
            await client.__aenter__()
            self._client = self._last_client = client
        except BaseException as exc:
            tail = self._tail()
            with anyio.CancelScope(shield=True):  # a cancelled start stops the child too
                await self._stop()
            if isinstance(exc, TimeoutError):
                raise EngineError(
                    f"the engine process did not start within {self.startup_timeout}s{tail}"
                ) from None
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        with anyio.CancelScope(shield=True):
            if client is not None:
                await client.__aexit__(None, None, None)
            await self._stop()

    async def _listening(self) -> str:
        """The URL from the child's first line on stdout."""
        from ..openai_server import LISTENING

        assert self._process is not None and self._process.stdout is not None
        lines = BufferedByteReceiveStream(self._process.stdout)
        try:
            while True:
                line = await lines.receive_until(b"\n", 1 << 16)
                text = line.decode("utf-8", "replace").strip()
                if text.startswith(LISTENING):
                    return text[len(LISTENING) :].strip()
        except (anyio.IncompleteRead, anyio.DelimiterNotFound):
            pass  # stdout closed (the child exited) or no line at all
        await self._process.wait()
        raise EngineError(
            f"the engine process exited with status {self._process.returncode} before "
            f"listening{self._tail()}"
        )

    async def _wait_healthy(self) -> None:
        import httpx

        assert self._process is not None and self.url is not None
        health = self.url.removesuffix("/v1") + "/health"
        async with httpx.AsyncClient(timeout=5.0) as http:
            while True:
                try:
                    if (await http.get(health)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if self._process.returncode is not None:
                    raise EngineError(
                        f"the engine process exited with status {self._process.returncode} "
                        f"while starting{self._tail()}"
                    )
                await anyio.sleep(0.1)

    async def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.returncode is None:
                process.terminate()
                with anyio.move_on_after(self.stop_timeout):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            await process.aclose()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _tail(self, limit: int = 2000) -> str:
        """The end of the child's stderr, as a suffix for an error message."""
        f = self._stderr
        if f is None:
            return ""
        f.flush()
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - limit))
        text = f.read().decode("utf-8", "replace").strip()
        return f"; its stderr ends:\n{text}" if text else ""
