"""The blocking facade: the async core on its own event-loop thread."""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Self, cast

import anyio
from anyio.from_thread import BlockingPortal

from ._context import raise_single
from ._result import ScaffoldingResult
from ._runtime import AsyncScaffoldingLlm, Prompt, _is_single_prompt, validate_prompt
from ._worker import Worker

__all__ = ["ScaffoldingLlm"]


class _LoopThread:
    """A daemon thread running one anyio event loop with a blocking portal."""

    def __init__(self, core: AsyncScaffoldingLlm, backend: str) -> None:
        self.core = core
        self._ready: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop: anyio.Event | None = None
        self.thread = threading.Thread(
            target=self._main, args=(backend,), name="scaffold-actors-loop", daemon=True
        )
        self.thread.start()
        kind, value = self._ready.get()
        if kind == "error":
            self.thread.join()
            if isinstance(value, BaseExceptionGroup):
                raise_single(value)
            raise value
        self.portal: BlockingPortal = value

    def _main(self, backend: str) -> None:
        try:
            anyio.run(self._amain, backend=backend)
        except BaseException as exc:  # reported to the constructor if not started yet
            self._ready.put(("error", exc))

    async def _amain(self) -> None:
        async with BlockingPortal() as portal:
            self._stop = anyio.Event()
            async with self.core:
                self._ready.put(("ok", portal))
                await self._stop.wait()

    def stop(self) -> None:
        try:
            self.portal.call(self.core.shutdown)
            assert self._stop is not None
            self.portal.call(self._stop.set)
        except RuntimeError:
            pass  # the loop is already gone
        self.thread.join()


class ScaffoldingLlm:
    """Run an inference-time method over workers from synchronous code.

    The runtime runs on its own event-loop thread (``backend`` ``"trio"`` or
    ``"asyncio"``; choose ``"asyncio"`` when worker handlers use asyncio APIs).
    Methods block the calling thread, never the loop.  Use it as a context manager
    or call :meth:`shutdown`; a forgotten instance is shut down when collected.
    ``backend=None`` means the class's ``default_backend``.

    ``generate(prompt | list)`` waits for the results; ``generate_async(prompt)``
    returns a :class:`ScaffoldingResult` at once, which can be waited on
    (``result()``), iterated for partial outputs, awaited from another event loop,
    or cancelled.  See :class:`AsyncScaffoldingLlm` for the other parameters.
    """

    def __init__(
        self,
        prototype_controller: Any,
        workers: Mapping[Any, Worker],
        *,
        max_in_flight: int = 64,
        trace: bool = False,
        cancel_grace: float = 5.0,
        backend: Literal["trio", "asyncio"] | None = None,
    ) -> None:
        backend = backend or self.default_backend
        if backend not in ("trio", "asyncio"):
            raise ValueError(f"backend must be 'trio' or 'asyncio', got {backend!r}")
        self._core = AsyncScaffoldingLlm(
            prototype_controller,
            workers,
            max_in_flight=max_in_flight,
            trace=trace,
            cancel_grace=cancel_grace,
        )
        self.prototype_controller = prototype_controller
        self.workers = self._core.workers
        self._loop = _LoopThread(self._core, backend)
        self._closed = False
        self._finalizer = weakref.finalize(self, _LoopThread.stop, self._loop)

    default_backend: Literal["trio", "asyncio"] = "trio"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def generate_async(
        self, prompt: Prompt, *, block: bool = True, **kwargs: Any
    ) -> ScaffoldingResult:
        """Submit one request; returns its result handle without waiting for it.

        Raises :class:`InvalidTaskError` for bad input before submitting anything;
        blocks while ``max_in_flight`` requests run unless ``block=False`` (then
        :class:`TooManyRequestsError`).
        """
        if self._closed:
            from ._errors import RuntimeClosedError

            raise RuntimeClosedError("ScaffoldingLlm is shut down")
        portal = self._loop.portal

        async def submit() -> ScaffoldingResult:
            return await self._core.generate_async(prompt, block=block, **kwargs)

        result = portal.call(submit)
        result._portal = portal
        return result

    def generate(self, prompts: Prompt | Sequence[Prompt], **kwargs: Any) -> Any:
        """Run one prompt (returns its result) or a list (returns a list).

        Raises the first failed request's exception after all have finished.
        """
        single = _is_single_prompt(prompts)
        batch = cast("list[Prompt]", [prompts] if single else list(prompts))
        for p in batch:
            validate_prompt(p)
        results = [self.generate_async(p, **kwargs) for p in batch]
        errors: list[BaseException] = []
        for r in results:
            try:
                r.result()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        return results[0] if single else results

    def stats(self) -> dict[str, int]:
        return self._loop.portal.call(self._core.stats)

    def shutdown(self, shutdown_workers: bool = False) -> None:
        """Cancel requests in flight, stop workers and the loop thread; idempotent.

        ``shutdown_workers=True`` also calls each worker's ``shutdown()``.
        """
        if self._closed:
            return
        self._closed = True
        self._finalizer()
        if shutdown_workers:
            for worker in {id(w): w for w in self.workers.values()}.values():
                worker.shutdown()
