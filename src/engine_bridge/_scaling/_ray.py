"""Any local engine hosted in a Ray actor, placed by Ray anywhere in a cluster.

The actor (:class:`EngineHost`) builds the engine inside its own process,
takes each request as a ``submit`` call, and sends every request's deltas and
ends through one Ray streaming generator (one object per engine step, whatever
the number of requests); the caller's side (:class:`RayEngine`) is a
:class:`~engine_bridge.BridgedEngine` whose bridge thread runs an asyncio loop
that makes those calls and reads that stream, so no Ray call ever runs on the
caller's event loop.  ``ray`` is imported when the engine starts,
so this module imports anywhere.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.to_thread

from .._bridge import AsyncioBridgedEngine, RequestStream
from .._types import (
    EngineClosedError,
    EngineDelta,
    EngineError,
    EngineRequest,
    KVCacheDrop,
    check_context,
)

__all__ = ["EngineHost", "RayEngine", "RayPlacement", "build_local_engine"]

_RAY_INIT = threading.Lock()

#: engine kinds a RayEngine can name instead of giving a factory
_KINDS = {
    "simulated": ("engine_bridge._engines._simulated", "SimulatedEngine"),
    "hf": ("engine_bridge._engines._hf", "HFEngine"),
    "trtllm": ("engine_bridge._engines._trtllm", "TRTLLMEngine"),
}


def build_local_engine(engine: str | Callable[[], Any], options: dict[str, Any]) -> Any:
    """The engine a :class:`RayEngine`'s actor hosts: ``engine`` is a kind
    (``"simulated"``, ``"hf"``, ``"trtllm"``, built with ``options`` as keyword
    arguments) or a callable that returns an engine (``options`` must then be
    empty).  Raises :class:`ValueError` for an unknown kind."""
    if callable(engine):
        if options:
            raise ValueError("engine_options are for a named engine kind, not a factory")
        return engine()
    try:
        module, name = _KINDS[engine]
    except KeyError:
        raise ValueError(
            f"unknown engine kind {engine!r} for RayEngine: one of {', '.join(_KINDS)}, "
            "or a callable that returns an engine"
        ) from None
    return getattr(importlib.import_module(module), name)(**options)


class _Pump:
    """One request inside the actor: the deltas its engine stream produced and
    not yet sent, and how it ended."""

    __slots__ = (
        "aborted", "done", "entered", "error", "finished", "items", "reported", "rid", "scope",
        "taken", "task",
    )  # fmt: skip

    def __init__(self, rid: str) -> None:
        self.rid = rid
        self.items: list[EngineDelta] = []
        self.taken = asyncio.Event()  # the engine took it, or it is over
        self.reported = False  # its refusal went back as submit()'s error
        self.done = asyncio.Event()  # the engine stream was left (the engine released it)
        self.finished = False
        self.entered = False  # the engine took it (its open_stream entered)
        self.aborted = False
        self.error: BaseException | None = None
        self.scope: anyio.CancelScope | None = None
        self.task: asyncio.Task[None] | None = None


class EngineHost:
    """The Ray actor that hosts one engine (made a Ray actor class by
    :class:`RayEngine`; its methods run in the actor's asyncio loop).

    ``submit(rid, request, announce)`` starts a request (with ``announce``, it
    returns once the engine took it, raising its refusal); ``events()`` is one
    streaming generator for all requests: each item a list of ``(rid, deltas,
    end)``, what every request produced since the last item (one object per
    engine step, whatever the number of requests), ``end`` set once a request is
    over (``("end", None)``, or ``("error", exc)`` with the engine's error as
    itself); ``abort(rid)`` makes the engine drop request ``rid`` and returns
    once the engine confirmed it (its stream left, which waits for the engine's
    own acknowledgement), with the host's counts."""

    def __init__(self, engine: str | Callable[[], Any], options: dict[str, Any]) -> None:
        self._engine_spec = engine
        self._options = options
        self.engine: Any = None
        self._life: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._live: dict[str, _Pump] = {}
        self._dirty: dict[str, _Pump] = {}  # requests with something for events()
        self._wake = asyncio.Event()
        self.completed = 0
        self.aborted = 0
        self.failed = 0
        self.refused = 0

    async def start(self) -> dict[str, Any]:
        """Build and start the engine; returns where it runs and what it takes.

        The engine lives in one task of its own from start to close (an engine
        that opens a task group must leave it in the task that entered it; Ray
        runs each call in a task of its own)."""
        import ray

        engine = build_local_engine(self._engine_spec, self._options)
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closing = asyncio.Event()
        self._life = asyncio.get_running_loop().create_task(self._live_with(engine, started))
        await started
        self.engine = engine
        ctx = ray.get_runtime_context()
        return {
            "node_id": ctx.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
            "pid": os.getpid(),
            "engine": repr(engine),
            "max_context": getattr(engine, "max_context", None),
        }

    async def _live_with(self, engine: Any, started: asyncio.Future[None]) -> None:
        try:
            async with engine:
                started.set_result(None)
                await self._closing.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            else:
                raise

    async def close(self) -> None:
        """Close the engine (what closing it raises is raised)."""
        life = self._life
        self.engine = None
        self._wake.set()  # events() ends
        if life is not None:
            self._life = None
            self._closing.set()
            await life

    def stats(self) -> dict[str, Any]:
        """The host's own counts and its engine's (``active``: requests the
        engine holds now, as the engine counts them)."""
        engine = self.engine
        return {
            "active": engine.num_active if engine is not None else 0,
            "healthy": bool(engine is not None and engine.healthy),
            "live": len(self._live),
            "completed": self.completed,
            "aborted": self.aborted,
            "failed": self.failed,
            "refused": self.refused,
        }

    def check(self, request: EngineRequest) -> None:
        self._engine().check(request)

    def count_prompt_tokens(self, request: EngineRequest) -> int:
        return int(self._engine().count_prompt_tokens(request))

    async def count_tokens(self, request: EngineRequest) -> int:
        return int(await self._engine().count_tokens(request))

    async def drop_kv_cache(self, drop: KVCacheDrop) -> int | None:
        result: int | None = await self._engine().drop_kv_cache(drop)
        return result

    def _engine(self) -> Any:
        if self.engine is None:
            raise EngineClosedError("the Ray actor's engine is not running")
        return self.engine

    async def _pump(self, request: EngineRequest, pump: _Pump) -> None:
        try:
            with anyio.CancelScope() as scope:
                pump.scope = scope
                if pump.aborted:  # (aborted before this task ran)
                    scope.cancel()
                async with self._engine().open_stream(request) as stream:
                    pump.entered = True
                    pump.taken.set()
                    async for delta in stream:
                        pump.items.append(delta)
                        self._touch(pump)
            if scope.cancelled_caught:
                pump.aborted = True
                self.aborted += 1
            else:
                self.completed += 1
        except BaseException as exc:  # carried to the caller as itself
            self.failed += 1
            pump.error = exc
        finally:
            pump.finished = True
            pump.done.set()
            pump.taken.set()
            self._touch(pump)

    def _touch(self, pump: _Pump) -> None:
        self._dirty[pump.rid] = pump
        self._wake.set()

    async def submit(self, rid: str, request: EngineRequest, announce: bool = True) -> bool:
        """Start request ``rid``: its deltas and its end come through
        :meth:`events`.  With ``announce``, returns once the engine took it,
        raising the engine's refusal (then nothing of it comes through
        :meth:`events`).  ``False`` when it was aborted before it came."""
        try:
            self._engine().check(request)  # bad input raises here, before admission
        except BaseException:
            self.refused += 1
            raise
        pump = _Pump(rid)
        self._live[rid] = pump
        pump.task = asyncio.get_running_loop().create_task(self._pump(request, pump))
        if announce:
            await pump.taken.wait()
            if not pump.entered and pump.error is not None:
                pump.reported = True
                raise pump.error
        return True

    async def events(self) -> Any:
        """Every request's deltas and ends, in lists of ``(rid, deltas, end)``;
        ends once the host closes."""
        while self.engine is not None or self._dirty:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, {}
            batch: list[tuple[str, list[EngineDelta], Any]] = []
            for rid, pump in dirty.items():
                finished, items = pump.finished, pump.items
                end: Any = None
                if finished:
                    self._live.pop(rid, None)
                    if pump.reported:
                        continue  # its refusal went back as submit()'s error
                    end = ("error", pump.error) if pump.error is not None else ("end", None)
                # the last delta waits for the engine stream's exit (the engine
                # released the request), so its arrival says so
                final = bool(items) and items[-1].finish_reason is not None
                send: list[EngineDelta] = []
                if items and (finished or not final):
                    pump.items = []
                    send = [] if pump.aborted else items
                if send or end is not None:
                    batch.append((rid, send, end))
            if batch:
                yield batch

    async def abort(self, rid: str) -> dict[str, Any]:
        """Drop request ``rid`` in the engine; returns once the engine confirmed
        it (or at once when it is over), with :meth:`stats`."""
        # (a caller's calls start in the order it made them: a request it aborts
        # was submitted before; none here means it is over)
        pump = self._live.get(rid)
        if pump is not None and not pump.finished:
            pump.aborted = True
            if pump.scope is not None:
                pump.scope.cancel()
            await pump.done.wait()
        return self.stats()


class RayPlacement:
    """One Ray placement group shared by several :class:`RayEngine` replicas:
    a bundle of resources for each, placed by ``strategy`` (``"SPREAD"``: on
    different nodes where the cluster has them, ``"STRICT_SPREAD"``: on
    different nodes or not at all, ``"PACK"``, ``"STRICT_PACK"``).

    The group is made when the first of its engines starts (after Ray is
    initialised) and removed when the last one closes.  Thread-safe; each
    engine's bridge thread calls :meth:`acquire` and :meth:`release`."""

    def __init__(self, bundles: list[dict[str, float]], strategy: str = "SPREAD") -> None:
        if not bundles or any(not b for b in bundles):
            raise ValueError("a placement needs one non-empty bundle per replica")
        if strategy not in ("SPREAD", "STRICT_SPREAD", "PACK", "STRICT_PACK"):
            raise ValueError(f"unknown placement strategy {strategy!r}")
        self.bundles = [dict(b) for b in bundles]
        self.strategy = strategy
        self.group: Any = None
        self._users = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RayPlacement({len(self.bundles)} bundles, {self.strategy})"

    def acquire(self) -> Any:
        """The placement group (made on first use)."""
        from ray.util import placement_group

        with self._lock:
            if self.group is None:
                self.group = placement_group(self.bundles, strategy=self.strategy)
            self._users += 1
            return self.group

    def release(self) -> None:
        """One engine is done with it; the last removes the group."""
        from ray.util import remove_placement_group

        with self._lock:
            self._users -= 1
            if self._users == 0 and self.group is not None:
                remove_placement_group(self.group)
                self.group = None


class _RayRequest:
    __slots__ = (
        "abort_ref", "abort_requested", "admitted", "key", "request", "stream", "submitted",
    )  # fmt: skip

    def __init__(self, request: EngineRequest) -> None:
        self.request = request
        self.stream = RequestStream()
        self.admitted: anyio.Event | None = None  # set by open_stream, which waits on it
        self.key: Any = None
        self.submitted = False  # sent to the actor (bridge thread only)
        self.abort_requested = False  # bridge thread only
        self.abort_ref: Any = None


class RayEngine(AsyncioBridgedEngine):
    """An engine hosted in a Ray actor, which Ray places on any node of the
    cluster that has the resources asked for.

    Parameters:
        engine: the engine the actor hosts: ``"simulated"``, ``"hf"`` or
            ``"trtllm"`` (made with ``engine_options`` as keyword arguments, in
            the actor's process), or a callable (pickled by Ray) that returns an
            engine.
        engine_options: keyword arguments of the named engine kind.
        address: the cluster to join when Ray is not initialised in this
            process yet (``"auto"``: the one ``ray start`` made on this machine;
            ``None``: Ray's default, which starts a local one when none runs).
        num_cpus, num_gpus, resources, label_selector: what the actor needs
            (Ray places it on a node that has it).  ``num_cpus`` defaults to
            Ray's (one CPU to place it).
        scheduling_strategy: Ray's (``"SPREAD"``, a placement group strategy,
            a node affinity ...); ``"SPREAD"`` by default, so that replicas go to
            different nodes where they can.
        actor_options: anything else of Ray's ``.options()`` for the actor.
        max_concurrent: requests sent to the actor at once (more wait here).
        abort_timeout: how long leaving ``open_stream`` early waits for the
            actor to confirm that its engine dropped the request.
        start_timeout: how long starting waits for Ray to place the actor and
            for its engine to start.
        backpressure: objects the actor's event stream may run ahead of the
            reader before the actor waits (Ray's generator backpressure).

    Behaviour: ``async with engine:`` starts the actor and its engine (raising
    :class:`EngineError` with the actor's own error when it fails to start, or
    when Ray finds no node for it within ``start_timeout``); leaving closes the
    engine in the actor and kills the actor.

    Cancellation: leaving ``open_stream`` before the end asks the actor to drop
    the request; the actor returns once its engine confirmed the abort (for a
    bridged engine, its own acknowledgement), and only then is the request
    released here, so ``num_active`` and the actor's ``stats()["active"]`` agree.

    Errors: an error of the remote engine (an :class:`InvalidRequestError`, an
    :class:`EngineError`) is raised as itself.  The actor's or its node's death
    fails every request in flight with :class:`EngineClosedError` naming the node
    and the request, and the engine reports itself unhealthy (an
    :class:`EnginePool` takes it out, and sends again what it had delivered
    nothing of).

    Token counts: :meth:`count_prompt_tokens` returns 0 (the tokenizer lives
    in the actor); :meth:`count_tokens` asks the actor.  :meth:`check` checks
    ``max_tokens`` against the engine's context; a prompt too long for it is
    refused when the request reaches the actor, as an
    :class:`InvalidRequestError`.
    """

    def __init__(
        self,
        engine: str | Callable[[], Any] = "simulated",
        *,
        engine_options: dict[str, Any] | None = None,
        address: str | None = None,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        resources: dict[str, float] | None = None,
        label_selector: dict[str, str] | None = None,
        scheduling_strategy: Any = "SPREAD",
        actor_options: dict[str, Any] | None = None,
        max_concurrent: int = 256,
        abort_timeout: float = 10.0,
        start_timeout: float = 300.0,
        backpressure: int = 64,
        name: str | None = None,
        placement: RayPlacement | None = None,
        bundle_index: int = 0,
    ) -> None:
        super().__init__(max_concurrent, abort_timeout)
        if placement is not None and not 0 <= bundle_index < len(placement.bundles):
            raise ValueError(f"bundle_index {bundle_index} is not a bundle of {placement!r}")
        if not callable(engine) and engine not in _KINDS:
            raise ValueError(
                f"unknown engine kind {engine!r} for RayEngine: one of {', '.join(_KINDS)}, "
                "or a callable that returns an engine"
            )
        if callable(engine) and engine_options:
            raise ValueError("engine_options are for a named engine kind, not a factory")
        if not start_timeout > 0 or backpressure < 1:
            raise ValueError("start_timeout must be > 0 and backpressure >= 1")
        self.engine = engine
        self.engine_options = dict(engine_options or {})
        self.address = address
        options: dict[str, Any] = dict(actor_options or {})
        for key, value in (
            ("num_cpus", num_cpus),
            ("num_gpus", num_gpus),
            ("resources", resources),
            ("label_selector", label_selector),
            ("scheduling_strategy", scheduling_strategy),
        ):
            if value is not None:
                options.setdefault(key, value)
        if placement is not None:  # its bundle says what it needs, and where
            options.pop("scheduling_strategy", None)
            bundle = placement.bundles[bundle_index]
            options["num_cpus"] = bundle.get("CPU", 0)
            options["num_gpus"] = bundle.get("GPU", 0)
            custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU", "memory")}
            if custom:
                options["resources"] = custom
        self.placement = placement
        self.bundle_index = bundle_index
        # every request is a call in flight on the actor, plus its aborts and counts
        options.setdefault("max_concurrency", 2 * max_concurrent + 16)
        self.actor_options = options
        self.start_timeout = start_timeout
        self.backpressure = backpressure
        self.name = name or (engine if isinstance(engine, str) else "engine")
        self.node: dict[str, Any] = {}  # where the actor runs (after start)
        self.actor: Any = None
        self._ray: Any = None
        self._serving: set[asyncio.Task[None]] = set()
        self._to_spawn: collections.deque[_RayRequest] = collections.deque()
        self._spawn_scheduled = False
        self._close_error: BaseException | None = None
        self._by_rid: dict[str, _RayRequest] = {}  # submitted requests (bridge loop only)
        self._reader: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        where = f" on {self.node['node_ip']}" if self.node else ""
        return f"RayEngine({self.name!r}{where})"

    @classmethod
    def replicas(
        cls,
        count: int,
        engine: str | Callable[[], Any] = "simulated",
        *,
        strategy: str = "SPREAD",
        num_cpus: float = 1,
        num_gpus: float = 0,
        resources: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> list[RayEngine]:
        """``count`` engines made alike (for an :class:`EnginePool`), in one
        placement group of a bundle each (``num_cpus``, ``num_gpus``,
        ``resources``): with ``strategy="SPREAD"`` on different nodes where the
        cluster has them (see :class:`RayPlacement`)."""
        if count < 1:
            raise ValueError("count must be >= 1")
        bundle = {"CPU": float(num_cpus), **({"GPU": float(num_gpus)} if num_gpus else {})}
        bundle.update(resources or {})
        placement = RayPlacement([dict(bundle) for _ in range(count)], strategy)
        name = kwargs.pop("name", None) or (engine if isinstance(engine, str) else "engine")
        return [
            cls(engine, name=f"{name}-{i}", placement=placement, bundle_index=i, **kwargs)
            for i in range(count)
        ]

    # -- Engine protocol -------------------------------------------------
    def _running(self) -> bool:
        return self.actor is not None and self._loop is not None

    @property
    def max_context(self) -> int | None:
        value = self.node.get("max_context")
        return int(value) if value else None

    def check(self, request: EngineRequest) -> None:
        limit = self.max_context
        if limit is not None:
            check_context(0, request.params.max_tokens, limit)

    def count_prompt_tokens(self, request: EngineRequest) -> int:
        return 0  # the tokenizer lives in the actor: count_tokens asks it

    async def count_tokens(self, request: EngineRequest) -> int:
        """The prompt's token count, from the engine in the actor."""
        result: int = await self._call("count_tokens", request)
        return result

    async def drop_kv_cache(self, drop: KVCacheDrop) -> int | None:
        """The engine in the actor takes the hint (what it raises is raised)."""
        result: int | None = await self._call("drop_kv_cache", drop)
        return result

    async def stats(self) -> dict[str, Any]:
        """The actor's own counts: ``active`` (requests its engine holds now, as
        the engine counts them), ``live``, ``completed``, ``aborted``, ``failed``,
        ``refused`` (by the engine's check), ``healthy``."""
        result: dict[str, Any] = await self._call("stats")
        return result

    async def _call(self, method: str, *args: Any) -> Any:
        """Call an actor method from the bridge loop and wait (cancellable)."""
        self._ensure_usable()
        loop = self._loop
        assert loop is not None
        future = asyncio.run_coroutine_threadsafe(self._remote(method, *args), loop)
        try:
            return await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
        except BaseException:
            future.cancel()
            raise

    async def _remote(self, method: str, *args: Any) -> Any:
        """(Bridge loop) ``actor.method.remote(*args)``, its error as itself."""
        try:
            return await getattr(self.actor, method).remote(*args)
        except BaseException as exc:
            raise self._unwrap(exc, None) from None

    # -- start and close -------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("RayEngine already started")
        try:
            self._ray = importlib.import_module("ray")
        except ImportError as exc:
            raise EngineError("RayEngine needs ray (pip install 'scaffold-actors[ray]')") from exc
        # (outside the bridge thread's asyncio loop, which must not own Ray's driver;
        # a cluster that does not answer is given up on after start_timeout)
        where = f"the Ray cluster at {self.address or 'the default address'}"
        with anyio.move_on_after(self.start_timeout) as joining:
            try:
                await anyio.to_thread.run_sync(self._init_ray, abandon_on_cancel=True)
            except Exception as exc:
                raise EngineError(
                    f"RayEngine {self.name!r}: could not join {where}: {exc}"
                ) from exc
        if joining.cancelled_caught:
            raise EngineError(
                f"RayEngine {self.name!r}: could not join {where} within {self.start_timeout} s"
            )
        await self._start_thread("ray-bridge")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop_thread()
        error, self._close_error = self._close_error, None
        if error is not None:
            raise error

    def _init_ray(self) -> None:
        """Join the cluster at ``address`` unless Ray is initialised in this
        process already (once per process: several engines start at once)."""
        ray = self._ray
        with _RAY_INIT:
            if not ray.is_initialized():
                ray.init(address=self.address, log_to_driver=False)

    def _thread_main(self, ready: Future[None]) -> None:
        try:
            asyncio.run(self._amain(ready))
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)

    async def _amain(self, ready: Future[None]) -> None:
        ray = self._ray
        self._serving = set()
        self._to_spawn.clear()
        self._spawn_scheduled = False
        self._stop = asyncio.Event()
        options = dict(self.actor_options)
        if self.placement is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            group = self.placement.acquire()
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=self.bundle_index
            )
        try:
            actor = (
                ray.remote(EngineHost).options(**options).remote(self.engine, self.engine_options)
            )
        except BaseException:
            if self.placement is not None:
                self.placement.release()
            raise
        try:
            self.node = await asyncio.wait_for(actor.start.remote(), self.start_timeout)
        except TimeoutError:
            ray.kill(actor)
            if self.placement is not None:
                self.placement.release()
            raise EngineError(
                f"RayEngine {self.name!r}: no Ray node took its actor within "
                f"{self.start_timeout} s (asked for {self._asked()})"
            ) from None
        except BaseException as exc:
            ray.kill(actor)
            if self.placement is not None:
                self.placement.release()
            cause = self._unwrap(exc, None)
            raise EngineError(
                f"RayEngine {self.name!r}: its actor failed to start: {cause!r}"
            ) from cause
        self.actor = actor
        self._loop = asyncio.get_running_loop()
        self._by_rid = {}
        self._reader = asyncio.get_running_loop().create_task(self._read_events())
        ready.set_result(None)
        try:
            await self._stop.wait()
        finally:
            for task in [*self._serving, self._reader]:
                task.cancel()
            try:
                await asyncio.wait_for(actor.close.remote(), 60)
            except BaseException as exc:
                if not self._lost(exc):  # a lost actor has nothing left to close
                    self._close_error = self._unwrap(exc, None)
            ray.kill(actor)
            if self.placement is not None:
                self.placement.release()
            self.actor = None
            self._loop = None

    def _asked(self) -> str:
        keys = ("num_cpus", "num_gpus", "resources", "label_selector", "scheduling_strategy")
        asked = {k: self.actor_options[k] for k in keys if k in self.actor_options}
        if self.placement is not None:
            asked["placement"] = f"bundle {self.bundle_index} of {self.placement!r}"
        return ", ".join(f"{k}={v!r}" for k, v in asked.items()) or "Ray's defaults"

    # -- requests ----------------------------------------------------------
    def _prepare(self, request: EngineRequest) -> _RayRequest:
        self._ensure_usable()
        self.check(request)
        return _RayRequest(request)

    def _submit(self, key: Any, state: Any) -> None:
        loop = self._loop
        assert loop is not None
        state.key = key
        self._to_spawn.append(state)
        if not self._spawn_scheduled:
            self._spawn_scheduled = True
            loop.call_soon_threadsafe(self._spawn)

    def _spawn(self) -> None:
        """Bridge loop: serve each queued request in a task of its own."""
        self._spawn_scheduled = False
        queued, create = self._to_spawn, asyncio.get_running_loop().create_task
        while queued:
            self._serving.add(create(self._serve(queued.popleft())))

    def _abort(self, key: Any, state: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            self._release(key)  # the actor is gone with the loop
            return

        def abort() -> None:  # bridge thread
            state.abort_requested = True
            if state.submitted and state.abort_ref is None:
                state.abort_ref = self.actor.abort.remote(str(key))
                self._serving.add(asyncio.get_running_loop().create_task(self._confirm(state)))

        try:
            loop.call_soon_threadsafe(abort)
        except RuntimeError:
            self._release(key)

    async def _serve(self, state: _RayRequest) -> None:
        """Bridge loop: send one request to the actor; its deltas and its end
        come through :meth:`_read_events`.  Through ``open_stream``, the actor
        answers once its engine took the request (or with its refusal)."""
        caller = self._caller
        assert caller is not None
        rid = str(state.key)
        try:
            if state.abort_requested:
                caller.call_soon(self._release, state.key)  # it never reached the actor
                return
            self._by_rid[rid] = state
            state.submitted = True
            await self.actor.submit.remote(rid, state.request, state.admitted is not None)
            if state.admitted is not None:
                caller.call_soon(state.admitted.set)
        except asyncio.CancelledError:
            raise  # the engine closes
        except BaseException as exc:
            self._by_rid.pop(rid, None)
            error = self._unwrap(exc, state.key)
            if self._lost(exc):
                caller.call_soon(self._on_failure, exc)
            else:
                if not state.abort_requested:
                    caller.call_soon(self._fail, state, error)
                caller.call_soon(self._release, state.key)
        finally:
            self._serving.discard(asyncio.current_task())

    async def _confirm(self, state: _RayRequest) -> None:
        """Bridge loop: the actor's answer to an abort: its engine dropped the
        request, which is released here from now on."""
        caller = self._caller
        assert caller is not None
        try:
            await state.abort_ref
        except asyncio.CancelledError:
            raise
        except BaseException:
            return  # a lost actor: every request fails and is released at once
        finally:
            self._serving.discard(asyncio.current_task())
        self._by_rid.pop(str(state.key), None)
        caller.call_soon(self._release, state.key)

    async def _read_events(self) -> None:
        """Bridge loop: the actor's one stream of every request's deltas and
        ends, handed to the event loop a batch at a time."""
        caller = self._caller
        assert caller is not None
        try:
            stream = self.actor.events.options(
                num_returns="streaming", _generator_backpressure_num_objects=self.backpressure
            ).remote()
            async for ref in stream:
                out: list[tuple[_RayRequest, list[EngineDelta], Any]] = []
                for rid, items, end in await ref:
                    state = self._by_rid.get(rid)
                    if state is None:
                        continue  # released already (its abort confirmed)
                    if end is not None:
                        del self._by_rid[rid]
                    out.append((state, [] if state.abort_requested else items, end))
                if out:
                    caller.call_soon(self._deliver_batch, out)
            if self._stop is not None and not self._stop.is_set():
                raise EngineError(f"{self!r}: the actor's event stream ended")
        except asyncio.CancelledError:
            raise  # the engine closes
        except BaseException as exc:
            caller.call_soon(self._on_failure, exc)

    def _lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the actor (or its node) is gone."""
        errors = self._ray.exceptions
        lost = (
            errors.RayActorError,
            errors.WorkerCrashedError,
            errors.NodeDiedError,
            errors.ObjectLostError,
            errors.OwnerDiedError,
        )
        return isinstance(exc, lost)

    def _unwrap(self, exc: BaseException, key: Any) -> BaseException:
        """The error to raise for ``exc`` from Ray: the remote engine's own
        exception as itself; a lost actor as :class:`EngineClosedError`."""
        errors = self._ray.exceptions
        if isinstance(exc, errors.RayTaskError):
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                return cause
            return EngineError(f"{self!r}: the actor raised {exc}")
        if self._lost(exc):
            where = (
                f"on node {self.node.get('node_ip')} ({str(self.node.get('node_id'))[:12]}) "
                if self.node
                else "(before it started) "
            )
            what = f" while serving request {key!r}" if key is not None else ""
            # Ray's own account of the death, first lines only (it can be long)
            why = " ".join(str(exc).split())[:300]
            err = EngineClosedError(
                f"{self!r}: the Ray actor {where}is gone{what}: {type(exc).__name__}: {why}"
            )
            err.__cause__ = exc
            return err
        return exc

    # -- event loop side ---------------------------------------------------------
    @asynccontextmanager
    async def open_stream(
        self, request: EngineRequest
    ) -> AsyncIterator[AsyncIterator[EngineDelta]]:
        """Admit ``request`` (waiting while ``max_concurrent`` requests run), wait
        until the actor's engine took it (raising its refusal, e.g. an
        :class:`InvalidRequestError` for a prompt too long, here), and yield its
        deltas; leaving the block aborts it in the actor's engine and waits, for
        at most ``abort_timeout`` seconds, until the actor confirms.  (A stream
        started by :meth:`start_stream` gets such a refusal as its error.)"""
        state = self._prepare(request)
        state.admitted = anyio.Event()
        async with self._admit(state) as key:
            self._submit(key, state)
            await state.admitted.wait()
            stream = state.stream
            if stream.error is not None and not stream._pending:
                raise stream.error
            yield stream

    def _deliver_batch(self, out: list[tuple[_RayRequest, list[EngineDelta], Any]]) -> None:
        for state, items, end in out:
            if items:
                self._deliver(state, items)
            if end is not None:
                kind, error = end
                if kind == "error" and not state.stream.done:
                    self._fail(state, error)
                self._release(state.key)

    def _on_failure(self, exc: BaseException) -> None:
        """The actor's stream or a call failed for the actor's sake: every
        request fails, each with an error naming it; the engine is unhealthy."""
        self._failure = self._unwrap(exc, None)
        for key, state in [*self._live.items(), *self._orphans.items()]:
            state.stream.release()
            state.stream.fail(self._unwrap(exc, key) if self._lost(exc) else self._failure)
            if state.admitted is not None:
                state.admitted.set()
        self._orphans.clear()

    def _fail(self, state: _RayRequest, error: BaseException) -> None:
        state.stream.fail(error)
        if state.admitted is not None:
            state.admitted.set()

    def _fail_all(self, err: BaseException) -> None:
        states = [*self._live.values(), *self._orphans.values()]
        super()._fail_all(err)
        for state in states:
            if state.admitted is not None:
                state.admitted.set()

    def _deliver(self, state: _RayRequest, items: list[EngineDelta]) -> None:
        if state.admitted is not None:
            state.admitted.set()
        stream = state.stream
        for delta in items:
            if stream.done:
                return  # aborted: late output dropped
            if delta.finish_reason is not None:
                self.completed += 1
            # a final delta comes once the actor's engine let the request go
            stream.push(delta)
