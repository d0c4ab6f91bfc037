"""The blocking facade: the async core on its own event-loop thread."""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Self, cast

import anyio
from anyio.from_thread import BlockingPortal

from engine_bridge import first_error

from ._errors import RuntimeClosedError
from ._result import ScaffoldingResult
from ._runtime import AsyncScaffoldingLlm, Prompt, _is_single_prompt, validate_prompt
from ._worker import Worker

__all__ = ["ScaffoldingLlm"]


def _single(error: BaseException) -> BaseException:
    """``error`` itself, or the one real error inside an exception group."""
    return first_error(error) if isinstance(error, BaseExceptionGroup) else error


_log = logging.getLogger("scaffold_actors")


class _LoopThread:
    """A daemon thread running one anyio event loop with a blocking portal.

    An error that ends the loop after start-up is kept in ``error`` and raised to
    the caller (by :meth:`stop`, and chained from the error of any later call).
    """

    def __init__(self, core: AsyncScaffoldingLlm, backend: str) -> None:
        self.core = core
        self.error: BaseException | None = None
        self._ready: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._started = False
        self._stop: anyio.Event | None = None
        self.thread = threading.Thread(
            target=self._main, args=(backend,), name="scaffold-actors-loop", daemon=True
        )
        self.thread.start()
        kind, value = self._ready.get()
        if kind == "error":
            self.thread.join()
            raise _single(value)
        self.portal: BlockingPortal = value

    def _main(self, backend: str) -> None:
        try:
            anyio.run(self._amain, backend=backend)
        except BaseException as exc:
            if self._started:
                self.error = _single(exc)  # raised to the caller by stop()
            else:
                self._ready.put(("error", exc))

    async def _amain(self) -> None:
        async with BlockingPortal() as portal:
            self._stop = anyio.Event()
            async with self.core:
                self._started = True
                self._ready.put(("ok", portal))
                await self._stop.wait()

    def check_running(self) -> None:
        """Raise :class:`RuntimeClosedError` (chained from the loop's error) if the
        loop thread has ended."""
        if not self.thread.is_alive():
            raise RuntimeClosedError(
                "the runtime's event-loop thread has stopped"
                + (f": {type(self.error).__name__}: {self.error}" if self.error else "")
            ) from self.error

    def stop(self, timeout: float) -> None:
        """Cancel what runs, stop the loop and join its thread, each within
        ``timeout`` seconds; raise the loop's error if it ended with one, or
        :class:`TimeoutError` if the thread does not end in time."""
        if self.thread.is_alive():
            stop = self._stop
            assert stop is not None

            async def shut() -> None:
                with anyio.move_on_after(timeout):
                    await self.core.shutdown()
                stop.set()

            try:
                self.portal.call(shut)
            except RuntimeError:
                pass  # the portal stopped between the check and the call: the loop ended
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"the event-loop thread did not stop within {timeout} s")
        error, self.error = self.error, None
        if error is not None:
            raise error

    def stop_quietly(self, timeout: float) -> None:
        """For the garbage collector's finalizer: nobody is left to raise to, so
        the loop's error (or a thread that would not stop) is logged, with its
        traceback, on the ``scaffold_actors`` logger instead of being lost."""
        try:
            self.stop(timeout)
        except BaseException as exc:
            _log.error(
                "a ScaffoldingLlm collected without shutdown() ended with an error: %r",
                exc,
                exc_info=exc,
            )


class ScaffoldingLlm:
    """Run an inference-time method over workers from synchronous code.

    The runtime runs on its own event-loop thread (``backend`` ``"trio"`` or
    ``"asyncio"``; choose ``"asyncio"`` when worker handlers use asyncio APIs).
    Methods block the calling thread, never the loop.  Use it as a context manager
    or call :meth:`shutdown`; a forgotten instance is shut down when collected.
    ``backend=None`` means the class's ``default_backend``, ``check_prompts=None``
    its ``default_check_prompts``.

    ``generate(prompt | list)`` waits for the results; ``generate_async(prompt)``
    returns a :class:`ScaffoldingResult` at once, which can be waited on
    (``result()``), iterated for partial outputs, awaited from another event loop,
    or cancelled.  See :class:`AsyncScaffoldingLlm` for the other parameters.

    Errors of the loop thread are never lost: if the runtime's loop ends with an
    error while running (a worker's engine failing to close, a crash under it),
    later calls raise :class:`RuntimeClosedError` chained from it and
    :meth:`shutdown` raises it.  :meth:`shutdown` is bounded: it waits at most
    ``shutdown_timeout`` seconds for the requests to unwind and as long again for
    the thread, then raises :class:`TimeoutError`.
    """

    def __init__(
        self,
        prototype_controller: Any,
        workers: Mapping[Any, Worker],
        *,
        max_in_flight: int = 64,
        trace: bool = False,
        cancel_grace: float = 30.0,
        backend: Literal["trio", "asyncio"] | None = None,
        shutdown_timeout: float = 60.0,
        check_prompts: bool | None = None,
    ) -> None:
        backend = backend or self.default_backend
        if check_prompts is None:
            check_prompts = self.default_check_prompts
        if backend not in ("trio", "asyncio"):
            raise ValueError(f"backend must be 'trio' or 'asyncio', got {backend!r}")
        self._core = AsyncScaffoldingLlm(
            prototype_controller,
            workers,
            max_in_flight=max_in_flight,
            trace=trace,
            cancel_grace=cancel_grace,
            check_prompts=check_prompts,
        )
        self.prototype_controller = prototype_controller
        self.workers = self._core.workers
        if not shutdown_timeout > 0:
            raise ValueError(f"shutdown_timeout must be > 0, got {shutdown_timeout!r}")
        self.shutdown_timeout = shutdown_timeout
        self._loop = _LoopThread(self._core, backend)
        self._closed = False
        self._finalizer = weakref.finalize(
            self, _LoopThread.stop_quietly, self._loop, shutdown_timeout
        )

    default_backend: Literal["trio", "asyncio"] = "trio"
    default_check_prompts: bool = True

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
            raise RuntimeClosedError("ScaffoldingLlm is shut down")
        self._loop.check_running()
        portal = self._loop.portal

        async def submit() -> ScaffoldingResult:
            return await self._core.generate_async(prompt, block=block, **kwargs)

        try:
            result = portal.call(submit)
        except RuntimeError as exc:
            if isinstance(exc, RuntimeClosedError) or self._loop.thread.is_alive():
                raise
            self._loop.thread.join()  # the portal refused: the loop is ending
            self._loop.check_running()
            raise
        result._portal = portal
        return result

    def generate(self, prompts: Prompt | Sequence[Prompt], **kwargs: Any) -> Any:
        """Run one prompt (returns its result) or a list (returns a list).

        Raises the first failed request's exception after all have finished.
        """
        single = _is_single_prompt(prompts)
        batch = cast("list[Prompt]", [prompts] if single else list(prompts))
        if self._core.check_prompts:
            for p in batch:
                validate_prompt(p)
        if self._closed:
            raise RuntimeClosedError("ScaffoldingLlm is shut down")
        self._loop.check_running()
        portal = self._loop.portal
        results: list[ScaffoldingResult] = []
        errors: list[BaseException] = []
        halted = False

        async def submit_and_wait() -> None:  # one trip to the loop for the whole batch
            for p in batch:
                if halted:
                    return
                r = await self._core.generate_async(p, **kwargs)
                r._portal = portal
                results.append(r)
            for r in results:
                await r._done.wait()

        async def cancel_all() -> None:  # in the loop: no submission slips past it
            nonlocal halted
            halted = True
            for r in results:
                r._cancel_now()
            for r in results:
                await r._done.wait()

        try:
            portal.call(submit_and_wait)
            for r in results:
                try:
                    r.result()
                except Exception as exc:
                    errors.append(exc)
        except (
            BaseException
        ):  # KeyboardInterrupt, a refused prompt...: no request outlives the call
            if self._loop.thread.is_alive():
                portal.call(cancel_all)
            raise
        if errors:
            raise errors[0]
        return results[0] if single else results

    def stats(self) -> dict[str, int]:
        self._loop.check_running()
        return self._loop.portal.call(self._core.stats)

    def shutdown(self, shutdown_workers: bool = False) -> None:
        """Cancel requests in flight, stop workers and the loop thread; idempotent.

        ``shutdown_workers=True`` also calls each worker's ``shutdown()``.
        """
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        try:
            self._loop.stop(self.shutdown_timeout)
        finally:
            if shutdown_workers:
                for worker in {id(w): w for w in self.workers.values()}.values():
                    worker.shutdown()
