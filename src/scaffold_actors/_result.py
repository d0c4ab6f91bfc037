"""The handle a caller gets for one submitted request."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.from_thread

from ._backend import Backend, current_backend
from ._errors import RequestCancelledError
from ._tasks import ScaffoldingOutput
from ._trace import ExecutionTrace, TokenUsage

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal

__all__ = ["CurrentOutput", "ScaffoldingResult"]

_END = object()


class ScaffoldingResult:
    """A submitted request: await it, iterate its partial outputs, or cancel it.

    * ``await result`` / ``await result.aresult()`` waits for the end and returns
      the result; it raises the request's original exception if it failed, or
      :class:`RequestCancelledError` if it was cancelled.
    * ``result.result(timeout)`` is the blocking form, for threads other than the
      runtime's event loop.
    * ``async for out in result`` (or ``for out in result`` from another thread)
      yields partial :class:`ScaffoldingOutput` snapshots published by the
      controller, then the final output.  A slow consumer skips intermediate
      snapshots instead of slowing the request down.  Several iterators may run
      at once; each sees the latest snapshot and the end.
    * ``result.cancel()`` cancels the request.  Called from another thread (the
      sync API) it returns once the request has unwound, i.e. its engine requests
      are aborted.  Inside the event loop use ``await result.acancel()`` for that
      guarantee; plain ``cancel()`` there only requests it (no further output is
      delivered either way).

    ``output`` is the final :class:`ScaffoldingOutput` (``None`` until done);
    ``usage`` the tokens used, ``trace`` the recorded tasks (if tracing is on).
    """

    def __init__(self, request_id: int, prompt: Any, backend: Backend | None = None) -> None:
        self._loop = backend if backend is not None else current_backend()
        self.request_id = request_id
        self.prompt = prompt
        self.output: ScaffoldingOutput | None = None
        self.usage = TokenUsage()
        self.trace: ExecutionTrace | None = None
        self.task_collections: Mapping[str, Any] | None = None
        self._exception: BaseException | None = None
        self._cancelled = False
        self._done = self._loop.Event()
        self._scope: Any = None  # the request's cancel scope, once it runs
        self._partial: ScaffoldingOutput | Callable[[], ScaffoldingOutput] | None = None
        self._partial_version = 0
        self._partial_event = self._loop.Event()
        self._loop_thread = threading.get_ident()
        self._portal: BlockingPortal | None = None
        self._latest: ScaffoldingOutput | None = None  # the last output iterated

    # -- state -----------------------------------------------------------
    @property
    def id(self) -> str:
        """The request's root execution scope id, ``"req-N"`` (TensorRT-LLM's
        ``result.id``: the key workers see in ``on_scope_end`` and
        ``set_scope_params``)."""
        return f"req-{self.request_id}"

    @property
    def done(self) -> bool:
        return bool(self._done.is_set())

    finished = done  # TensorRT-LLM name

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def exception(self) -> BaseException | None:
        """The request's error once it is done (``None`` if it succeeded)."""
        return self._exception

    def __repr__(self) -> str:
        state = (
            "cancelled"
            if self._cancelled
            else "failed"
            if self._exception
            else "done"
            if self.done
            else "running"
        )
        return f"<ScaffoldingResult #{self.request_id} {state}>"

    # -- producer side (runtime) ---------------------------------------------
    def _publish_partial(self, output: ScaffoldingOutput | Callable[[], ScaffoldingOutput]) -> None:
        """Publish a partial output, or a function that builds it when somebody
        reads it (a method that publishes after every sample builds nothing
        while nobody iterates)."""
        if self.done or self._cancelled:
            return
        self._partial = output
        self._partial_version += 1
        self._partial_event.set()

    def _finish(
        self,
        output: ScaffoldingOutput | None = None,
        exception: BaseException | None = None,
        cancelled: bool = False,
    ) -> None:
        if self.done:
            return
        if cancelled:
            self._cancelled = True
        elif exception is not None:
            self._exception = exception
        else:
            self.output = output
        self._done.set()
        self._partial_event.set()

    # -- thread plumbing -----------------------------------------------------
    def _in_loop(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _foreign_portal(self) -> BlockingPortal:
        if self._portal is None:
            raise RuntimeError(
                "this result belongs to another thread's event loop; use it from that loop"
            )
        return self._portal

    # -- waiting ---------------------------------------------------------------
    def _outcome(self) -> ScaffoldingResult:
        if self._cancelled:
            raise RequestCancelledError(f"request {self.request_id} was cancelled")
        if self._exception is not None:
            raise self._exception
        return self

    async def aresult(self) -> ScaffoldingResult:
        if self._in_loop():
            await self._done.wait()
            return self._outcome()
        # Awaited from another event loop (e.g. asyncio code over the sync API).
        portal = self._foreign_portal()
        await anyio.to_thread.run_sync(portal.call, self._done.wait)
        return self._outcome()

    def __await__(self) -> Generator[Any, None, ScaffoldingResult]:
        return self.aresult().__await__()

    def result(self, timeout: float | None = None) -> ScaffoldingResult:
        """Block until done (from a thread other than the runtime's loop).

        Raises :class:`TimeoutError` after ``timeout`` seconds.
        """
        if self._in_loop():
            raise RuntimeError("result() blocks; inside the event loop use `await result`")
        if self.done:
            return self._outcome()
        portal = self._foreign_portal()

        async def wait() -> None:
            with anyio.fail_after(timeout):
                await self._done.wait()

        portal.call(wait)
        return self._outcome()

    # -- cancelling -----------------------------------------------------------
    def _cancel_now(self) -> None:
        if self.done:
            return
        self._cancelled = True
        self._partial_event.set()
        if self._scope is not None:
            self._scope.cancel()

    async def acancel(self) -> None:
        """Cancel and wait until the request has unwound (engine requests aborted)."""
        if not self._in_loop():
            self._foreign_portal().call(self.acancel)
            return
        self._cancel_now()
        await self._done.wait()

    def cancel(self) -> None:
        if self._in_loop():
            self._cancel_now()
        else:
            self._foreign_portal().call(self.acancel)

    # -- TensorRT-LLM's ways of reading the output ------------------------------
    @property
    def outputs(self) -> list[ScaffoldingOutput]:
        """``[output]`` (TensorRT-LLM 1.2+: ``result.outputs[0].text``): the final
        output once done, the latest partial one while it streams, an empty one
        (``""``) before anything came."""
        if self.output is not None:
            return [self.output]
        latest = self._latest
        if latest is None:
            latest = self._latest = ScaffoldingOutput("", [], finished=False)
        return [latest]

    @property
    def cur_output(self) -> CurrentOutput:
        """The output's text as TensorRT-LLM 2025 read it (``result.cur_output``,
        compared to a string), also carrying that release's ``.outputs``."""
        out = self.outputs[0]
        return CurrentOutput(out)

    # -- streaming partial outputs -------------------------------------------------
    async def _next_output(self, seen: int) -> tuple[int, Any]:
        while True:
            if self._cancelled:
                return seen, _END
            if self._partial_version > seen and not self.done:
                partial = self._partial
                if callable(partial):
                    partial = self._partial = partial()
                return self._partial_version, partial
            if self.done:
                return -1, _END if seen == -1 else self._final_for_stream()
            # every iterator waits on the same event; it is replaced only once set,
            # so a second iterator never strands the first on a forgotten event
            if self._partial_event.is_set():
                self._partial_event = self._loop.Event()
            await self._partial_event.wait()

    def _final_for_stream(self) -> ScaffoldingOutput:
        self._outcome()
        assert self.output is not None
        return self.output

    def __aiter__(self) -> _AsyncOutputs:
        return _AsyncOutputs(self)

    #: what iterating yields: each output (``False``, ours) or, as in
    #: TensorRT-LLM, the result itself with ``outputs[0]`` the latest output
    #: (``True``, the compat ``ScaffoldingLlm``'s results)
    iterates_results: bool = False

    def _yielded(self, item: ScaffoldingOutput) -> Any:
        if not self.iterates_results:
            return item
        self._latest = item
        return self

    def __iter__(self) -> Iterator[Any]:
        if self._in_loop():
            raise RuntimeError("inside the event loop use `async for` over the result")
        portal = self._foreign_portal()
        seen = 0
        while True:
            seen, item = portal.call(self._next_output, seen)
            if item is _END:
                if self._cancelled:
                    raise RequestCancelledError(f"request {self.request_id} was cancelled")
                return
            yield self._yielded(item)


class _AsyncOutputs:
    __slots__ = ("_result", "_seen")

    def __init__(self, result: ScaffoldingResult) -> None:
        self._result = result
        self._seen = 0

    def __aiter__(self) -> _AsyncOutputs:
        return self

    async def __anext__(self) -> Any:
        r = self._result
        if r._in_loop():
            self._seen, item = await r._next_output(self._seen)
        else:
            portal = r._foreign_portal()
            self._seen, item = await anyio.to_thread.run_sync(
                portal.call, r._next_output, self._seen
            )
        if item is _END:
            if r._cancelled:
                raise RequestCancelledError(f"request {r.request_id} was cancelled")
            raise StopAsyncIteration
        return r._yielded(item)


class CurrentOutput(str):
    """A result's ``cur_output`` (TensorRT-LLM 2025): the output text, a string,
    that also reads as that release's output object (``.outputs[0].text``,
    ``.output_str``, ``.token_ids``)."""

    output: ScaffoldingOutput

    def __new__(cls, output: ScaffoldingOutput) -> Self:
        self = super().__new__(cls, output.text)
        self.output = output
        return self

    @property
    def outputs(self) -> list[ScaffoldingOutput]:
        return [self.output]

    @property
    def output_str(self) -> str | None:
        return self.output.output_str

    @property
    def token_ids(self) -> Any:
        return self.output.token_ids

    @property
    def finished(self) -> bool:
        return self.output.finished
