"""Several engine replicas behind one engine: least-loaded dispatch, prefix
affinity, replicas added and drained while requests run, dead replicas taken out."""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc

from .._bridge import RequestStream, raise_single
from .._protocol import Engine
from .._types import (
    EngineClosedError,
    EngineDelta,
    EngineError,
    EngineRequest,
    KVCacheDrop,
    NotSupportedError,
)

__all__ = ["EnginePool", "Replica", "ReplicaState", "prompt_key"]


class ReplicaState(enum.Enum):
    STARTING = "starting"
    LIVE = "live"
    DRAINING = "draining"  # takes no new request, finishes what it has
    DEAD = "dead"  # failed; taken out, being closed
    CLOSED = "closed"


class Replica:
    """One engine of a pool and what the pool knows of it (read-only for users)."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self.state = ReplicaState.STARTING
        self.in_flight = 0  # requests the pool has on it now
        self.served = 0  # requests it finished
        self.failed = 0  # requests that failed on it
        self.error: BaseException | None = None  # why it died
        self.close_error: BaseException | None = None  # what closing its engine raised
        self._stop = anyio.Event()
        self._idle = anyio.Event()
        self._closed = anyio.Event()

    def __repr__(self) -> str:
        return f"Replica({self.name!r}, {self.state.value}, in_flight={self.in_flight})"

    @property
    def routable(self) -> bool:
        return self.state is ReplicaState.LIVE and self.engine.healthy


def prompt_key(request: EngineRequest) -> Hashable:
    """The default affinity key: the prompt without its ``continuation``, so the
    samples of one prompt, and every continuation of them (probes, tree-search
    steps), go to the replica that holds the prompt's KV blocks."""
    if request.messages is not None:
        return hash(request.messages)
    if request.prompt is not None:
        return hash(request.prompt)
    return hash(request.prompt_token_ids)


class EnginePool:
    """Replicas of an engine (any kind, mixed if need be) behind one :class:`Engine`.

    Dispatch: a request goes to the live replica with the fewest requests in
    flight, unless ``affinity`` is on and its prompt (:func:`prompt_key`, or the
    callable given as ``affinity``) was sent to a replica before: then it goes there,
    where the engine can reuse the prompt's KV blocks, as long as that replica
    holds fewer than ``saturation`` requests; a saturated or gone replica loses the
    prompt to the least-loaded one.  The affinity table remembers the last
    ``affinity_entries`` prompts.

    Replicas are started and closed by the pool (``async with pool:``), and can be
    added (:meth:`add`) and drained (:meth:`drain`) while requests run.  A replica
    that fails (it raises :class:`EngineError` and reports itself unhealthy) is
    taken out and closed; its requests that had delivered nothing yet are sent
    again to another replica (at most ``max_retries`` times each), the others
    fail with :class:`EngineError` naming the replica.  An error of the request's
    own (a healthy replica's :class:`EngineError`, :class:`InvalidRequestError`)
    is raised as it is, without retrying.

    Each request is forwarded by a task of its own under ``open_stream``; leaving
    the block cancels it, which aborts the request in its replica before the
    block exits.

    A replica whose engine fails to close is not lost: :meth:`drain` raises its
    error, and leaving ``async with pool:`` raises the errors of the replicas it
    closed (the first, the others noted on it; noted on the body's own error if
    the block is leaving with one).
    """

    def __init__(
        self,
        replicas: Sequence[Engine] = (),
        *,
        affinity: bool | Callable[[EngineRequest], Hashable] = True,
        saturation: int = 64,
        max_retries: int = 2,
        affinity_entries: int = 1 << 16,
    ) -> None:
        if saturation < 1 or max_retries < 0 or affinity_entries < 1:
            raise ValueError("saturation >= 1, max_retries >= 0 and affinity_entries >= 1")
        self._initial = list(replicas)
        self._key: Callable[[EngineRequest], Hashable] | None = (
            (affinity if callable(affinity) else prompt_key) if affinity else None
        )
        self.saturation = saturation
        self.max_retries = max_retries
        self.affinity_entries = affinity_entries
        self._replicas: list[Replica] = []
        self._engines: list[Engine] = []  # every engine given or added, in order
        self._affinity: OrderedDict[Hashable, Replica] = OrderedDict()
        self._tg: anyio.abc.TaskGroup | None = None
        self._close_errors: list[BaseException] = []  # replicas that failed to close
        self._active = 0
        self._count = 0
        #: statistics
        self.affinity_hits = 0  # sent to the replica that had the prompt
        self.affinity_spills = 0  # that replica was saturated or gone
        self.retried = 0  # requests sent again after their replica died

    def __repr__(self) -> str:
        return f"EnginePool({self._replicas!r})"

    # -- Engine protocol -------------------------------------------------
    @property
    def num_active(self) -> int:
        return self._active

    @property
    def healthy(self) -> bool:
        return any(r.routable for r in self._replicas)

    @property
    def replicas(self) -> tuple[Replica, ...]:
        """The replicas the pool has now (closed ones are dropped)."""
        return tuple(self._replicas)

    @property
    def engines(self) -> tuple[Engine, ...]:
        """Every engine the pool was given or added, in order, closed ones too."""
        return tuple(self._engines)

    def _model(self) -> Engine | None:
        for r in self._replicas:
            if r.state in (ReplicaState.LIVE, ReplicaState.DRAINING):
                return r.engine
        return self._initial[0] if self._initial else None

    def check(self, request: EngineRequest) -> None:
        engine = self._model()  # replicas serve the same model: one speaks for all
        if engine is not None:
            engine.check(request)

    def count_prompt_tokens(self, request: EngineRequest) -> int:
        engine = self._model()
        return engine.count_prompt_tokens(request) if engine is not None else 0

    async def count_tokens(self, request: EngineRequest) -> int:
        """A replica's count (the replicas serve the same model)."""
        engine = self._model()
        if engine is None:
            raise EngineError("no replica of the pool can count tokens now")
        return await engine.count_tokens(request)

    async def drop_kv_cache(self, drop: KVCacheDrop) -> int | None:
        """The hint to every live or draining replica (the conversation may have
        been served by any), one after another; returns the blocks they freed in
        all (``None`` if none said).  A replica that fails does not stop the
        others: the first failure is raised after all were asked;
        :class:`NotSupportedError` only when no replica takes the hint."""
        engines = [
            r.engine
            for r in self._replicas
            if r.state in (ReplicaState.LIVE, ReplicaState.DRAINING)
        ]
        if not engines:
            raise EngineError("no replica of the pool is live")
        freed: int | None = None
        unsupported: list[NotSupportedError] = []
        failure: BaseException | None = None
        for engine in engines:
            try:
                n = await engine.drop_kv_cache(drop)
            except NotSupportedError as exc:
                unsupported.append(exc)
                continue
            except EngineError as exc:
                failure = failure or exc
                continue
            if n is not None:
                freed = (freed or 0) + n
        if failure is not None:
            raise failure
        if len(unsupported) == len(engines):
            raise unsupported[0]
        return freed

    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError("EnginePool already started")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            try:
                # together: model loads (and child processes) overlap
                replicas = [self._register(engine, None) for engine in self._initial]
                async with anyio.create_task_group() as starting:
                    for replica in replicas:  # in order, named in order
                        starting.start_soon(self._start, replica)
            except BaseExceptionGroup as group:
                raise_single(group)
        except BaseException as exc:
            self._tg = None
            tg.cancel_scope.cancel()  # the replicas that did start are closed
            try:
                await tg.__aexit__(type(exc), exc, exc.__traceback__)
            except BaseExceptionGroup as group:
                raise_single(group)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg = self._tg, None
        assert tg is not None
        for r in self._replicas:
            r._stop.set()  # every replica closes; their live requests fail
        self._affinity.clear()
        try:
            await tg.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # the body's error (or a replica task's) comes back as itself, with
            # the close errors noted on it
            errors, self._close_errors = self._close_errors, []
            try:
                raise_single(group)
            except BaseException as single:
                for e in errors:
                    single.add_note(f"also, a replica failed to close: {e!r}")
                raise
        errors, self._close_errors = self._close_errors, []
        if not errors:
            return
        if exc is not None:  # the body's error goes on; the close errors are noted on it
            for e in errors:
                exc.add_note(f"also, a replica failed to close: {e!r}")
            return
        first = errors[0]
        for e in errors[1:]:
            first.add_note(f"also, another replica failed to close: {e!r}")
        raise first

    # -- membership --------------------------------------------------------
    async def add(self, engine: Engine, name: str | None = None) -> Replica:
        """Start ``engine`` and route requests to it once it is up.

        Blocks while the engine starts (a model load can take a while); raises
        what its start raises, and the pool goes on without it."""
        if self._tg is None:
            raise EngineClosedError("pool is not running (use `async with pool:`)")
        return await self._start(self._register(engine, name))

    def _register(self, engine: Engine, name: str | None) -> Replica:
        self._count += 1
        replica = Replica(engine, name or f"replica-{self._count}")
        self._replicas.append(replica)
        self._engines.append(engine)
        return replica

    async def _start(self, replica: Replica) -> Replica:
        assert self._tg is not None
        try:
            await self._tg.start(self._run_replica, replica)
        except BaseException:
            if replica in self._replicas:
                self._replicas.remove(replica)
            raise
        return replica

    async def drain(self, replica: Replica | Engine, timeout: float | None = None) -> None:
        """Stop sending requests to ``replica``, wait for its requests to finish
        (at most ``timeout`` seconds: then the rest fail), then close it.

        Blocks until it is closed.  Cancelling the wait leaves it draining.
        Raises what closing its engine raised (the pool goes on without it)."""
        r = self._find(replica)
        if r.state in (ReplicaState.LIVE, ReplicaState.STARTING):
            r.state = ReplicaState.DRAINING
        if r.in_flight == 0:
            r._idle.set()
        with anyio.move_on_after(timeout if timeout is not None else float("inf")):
            await r._idle.wait()
        r._stop.set()
        await r._closed.wait()
        if r.close_error is not None:
            if r.close_error in self._close_errors:
                self._close_errors.remove(r.close_error)  # reported here, not at exit
            raise r.close_error

    def _find(self, replica: Replica | Engine) -> Replica:
        for r in self._replicas:
            if r is replica or r.engine is replica:
                return r
        raise ValueError(f"{replica!r} is not a replica of this pool")

    async def _run_replica(
        self, replica: Replica, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        started = False
        try:
            async with replica.engine:
                if replica.state is ReplicaState.STARTING:
                    replica.state = ReplicaState.LIVE
                started = True
                task_status.started()
                await replica._stop.wait()
        except Exception as exc:
            if not started:
                raise
            # a failing close must not end the pool, nor be lost: drain() raises
            # it, or the pool's exit does
            replica.close_error = exc
            self._close_errors.append(exc)
        finally:
            replica.state = ReplicaState.CLOSED
            if replica in self._replicas:
                self._replicas.remove(replica)
            replica._closed.set()

    def _retire(self, replica: Replica, error: BaseException) -> None:
        if replica.state in (ReplicaState.LIVE, ReplicaState.DRAINING):
            replica.state = ReplicaState.DEAD
            replica.error = error
            replica._stop.set()

    # -- dispatch ------------------------------------------------------------
    def _pick(self, key: Hashable, exclude: Sequence[Replica]) -> Replica:
        """The replica for a request, with the request counted on it at once (so
        requests submitted together spread); ``_forward`` uncounts it."""
        replica = self._choose(key, exclude)
        replica.in_flight += 1
        return replica

    def _choose(self, key: Hashable, exclude: Sequence[Replica]) -> Replica:
        live = [r for r in self._replicas if r.routable and r not in exclude]
        if not live:
            states = ", ".join(f"{r.name}: {r.state.value}" for r in self._replicas) or "none"
            raise EngineError(f"no live replica in the pool (replicas: {states})")
        owner = self._affinity.get(key) if key is not None else None
        if owner is not None:
            if owner in live and owner.in_flight < self.saturation:
                self._affinity.move_to_end(key)
                self.affinity_hits += 1
                return owner
            self.affinity_spills += 1
        best = min(live, key=lambda r: (r.in_flight, r.served + r.failed))
        if key is not None and (owner is None or not owner.routable):
            # a new prompt, or its replica is gone: it lives here from now on (a
            # saturated owner keeps it: its KV blocks are there)
            self._affinity[key] = best
            self._affinity.move_to_end(key)
            if len(self._affinity) > self.affinity_entries:
                self._affinity.popitem(last=False)
        return best

    @asynccontextmanager
    async def open_stream(
        self, request: EngineRequest
    ) -> AsyncIterator[AsyncIterator[EngineDelta]]:
        if self._tg is None:
            raise EngineClosedError("pool is not running (use `async with pool:`)")
        self.check(request)
        key = self._key(request) if self._key is not None else None
        first = self._pick(key, ())  # no live replica: raised here, at submission
        out = RequestStream()
        self._active += 1
        forwarding = False
        try:
            async with anyio.create_task_group() as tg:
                forwarding = True
                tg.start_soon(self._forward, request, key, first, out)
                try:
                    yield out
                finally:
                    tg.cancel_scope.cancel()  # aborts the request in its replica
        except BaseExceptionGroup as group:
            raise_single(group)
        finally:
            self._active -= 1
            if not forwarding:
                self._release(first)

    def _release(self, replica: Replica) -> None:
        replica.in_flight -= 1
        if replica.state is not ReplicaState.LIVE and replica.in_flight == 0:
            replica._idle.set()

    async def _forward(
        self, request: EngineRequest, key: Hashable, replica: Replica, out: RequestStream
    ) -> None:
        """Run ``request`` on ``replica`` (already counted on it) into ``out``,
        moving to another replica while a dead one had delivered nothing."""
        tried: list[Replica] = []
        while True:
            current, delivered = replica, False
            try:
                async with current.engine.open_stream(request) as stream:
                    async for delta in stream:
                        delivered = True
                        out.push(delta)
                current.served += 1
                if not out.done:
                    out.fail(EngineError(f"{current.name} ended the stream without finishing"))
                return
            except EngineError as exc:
                current.failed += 1
                if current.engine.healthy and not isinstance(exc, EngineClosedError):
                    out.fail(exc)  # the request's own error: the replica is fine
                    return
                self._retire(current, exc)
                tried.append(current)
                why = ""
                if delivered:
                    why = "after delivering output"
                elif len(tried) > self.max_retries:
                    why = f"{len(tried)} replicas tried"
                else:
                    try:
                        replica = self._pick(key, tried)
                    except EngineError:
                        why = "no other replica is live"
                if why:
                    err = EngineError(f"replica {current.name} failed ({why}): {exc}")
                    err.__cause__ = exc
                    out.fail(err)
                    return
                self.retried += 1
            except Exception as exc:
                current.failed += 1
                out.fail(exc)
                return
            finally:
                self._release(current)

    def stats(self) -> dict[str, Any]:
        """Counters for monitoring and benchmarks."""
        return {
            "replicas": [
                {
                    "name": r.name,
                    "state": r.state.value,
                    "in_flight": r.in_flight,
                    "served": r.served,
                    "failed": r.failed,
                }
                for r in self._replicas
            ],
            "affinity_hits": self.affinity_hits,
            "affinity_spills": self.affinity_spills,
            "retried": self.retried,
        }
