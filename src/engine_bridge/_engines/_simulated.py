"""A simulated engine with a virtual-time cost model.

It behaves like a continuous-batching engine: requests wait for admission until
their KV reservation (prompt tokens + ``max_tokens``) fits the KV capacity and the
batch has room; each scheduler step sleeps for a prefill time (new prompts) and a
decode time that grows with the batch size, then emits one token per running
request.  All sleeping goes through :func:`anyio.sleep`, so under trio's
``MockClock(autojump_threshold=0)`` a whole run is deterministic and takes no real
time.  Outputs come from a *responder*: a fixed string, a list cycled per request,
or a function of the request.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import attrs

from .._prefix import PrefixGate
from .._toolcalls import render_messages
from .._types import (
    EngineClosedError,
    EngineDelta,
    EngineError,
    EngineRequest,
    InvalidRequestError,
    KVCacheDrop,
    NotSupportedError,
    PrefixGroup,
    TopLogprobs,
    check_context,
    first_stop,
    stop_holdback,
)
from .._wordtok import WordTokenizer
from ..lowlevel import Park, Parked, Unpark, parking, trio_park, trio_unpark

__all__ = ["CostModel", "SimulatedCall", "SimulatedEngine", "SimulatedOutput"]


@attrs.frozen(slots=True)
class CostModel:
    """Virtual seconds the simulated engine spends.

    A scheduler step costs ``step_base + step_per_seq * batch_size``; admitting
    new requests costs ``prefill_per_token`` for each of their prompt tokens.
    """

    prefill_per_token: float = attrs.field(default=2e-5, validator=attrs.validators.ge(0))
    step_base: float = attrs.field(default=0.01, validator=attrs.validators.ge(0))
    step_per_seq: float = attrs.field(default=2e-4, validator=attrs.validators.ge(0))

    @classmethod
    def instant(cls) -> CostModel:
        """An engine that answers at once (for overhead measurements)."""
        return cls(0.0, 0.0, 0.0)

    def step_time(self, batch_size: int) -> float:
        return self.step_base + self.step_per_seq * batch_size

    def prefill_time(self, tokens: int) -> float:
        return self.prefill_per_token * tokens


@attrs.frozen(slots=True)
class SimulatedOutput:
    """What a responder returns when it wants more than the text: the
    ``logprobs`` (and ``top_logprobs``); a ``delay`` (seconds, on the loop's clock: virtual under a mock
    clock) between admission and the first token, a stall; an ``error`` the
    request fails with after ``error_after`` tokens (an engine dying
    mid-answer; at the end of ``text`` if it is shorter).  Other requests are
    served meanwhile."""

    text: str
    logprobs: Sequence[float] | None = None
    delay: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    error: BaseException | None = None
    error_after: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    #: per token, its alternatives ``((token, logprob), ...)`` for requests asking
    #: ``num_logprobs > 0`` (default: the sampled token, then made-up alternatives
    #: sharing the rest of the probability, halving)
    top_logprobs: Sequence[Sequence[tuple[str, float]]] | None = None


@attrs.frozen(slots=True)
class SimulatedCall:
    """What a responder sees: the rendered prompt, the request, and a seeded RNG.

    ``index`` counts requests submitted to this engine, starting at 0.  ``rng`` is
    seeded from the engine seed and the request's ``seed`` (or ``index`` when the
    request has none), so outputs are reproducible; it is made when first read
    (seeding one costs microseconds a responder that never draws need not pay).
    """

    prompt: str
    request: EngineRequest
    index: int
    _rng: random.Random | None = attrs.field(default=None, alias="rng")
    #: the seed ``rng`` is made from when none was given
    seed: int = attrs.field(default=0, kw_only=True)

    @property
    def rng(self) -> random.Random:
        rng = self._rng
        if rng is None:
            rng = random.Random(self.seed)
            object.__setattr__(self, "_rng", rng)
        return rng


Responder = Callable[[SimulatedCall], "str | SimulatedOutput"]


def _default_responder(call: SimulatedCall) -> str:
    n = call.rng.randint(0, 9)
    return f"Thinking step by step. The answer is \\boxed{{{n}}}."


def _make_responder(spec: str | Sequence[str] | Responder | None) -> Responder:
    if spec is None:
        return _default_responder
    if isinstance(spec, str):
        text = spec
        return lambda call: text
    if callable(spec):
        return spec
    items = list(spec)
    if not items:
        raise ValueError("responder list must not be empty")
    return lambda call: items[call.index % len(items)]


def _render_chat(messages: Sequence[Any], tools: Any) -> str:
    """Chat messages as the simulated engine's prompt text (no generation prompt)."""
    return "".join(f"<{m['role']}>\n{m['content']}\n" for m in render_messages(messages, tools))


def _continued(pieces: Sequence[str], continuation: str | None) -> int:
    """How many leading ``pieces`` spell ``continuation`` (0 if they do not)."""
    if not continuation:
        return 0
    text = ""
    for i, piece in enumerate(pieces):
        text += piece
        if text == continuation:
            return i + 1
        if not continuation.startswith(text):
            return 0
    return 0


class _SimRequest(Parked):
    """One request in the engine, and its stream of deltas: an async iterator
    (its consumer waits parked on it: no event object per wait, no buffer until
    a delta is queued), or, started by :meth:`SimulatedEngine.start_stream`, a
    :class:`~engine_bridge.StartedStream` read without a task."""

    __slots__ = (
        "blocks",
        "done",
        "emitted",
        "engine",
        "error",
        "fail",
        "finish",
        "group",
        "leads",
        "logprobs",
        "on_wake",
        "park",
        "pending",
        "pieces",
        "pos",
        "prompt_tokens",
        "ready_at",
        "released",
        "request",
        "reserve",
        "text_so_far",
        "top",
        "unpark",
    )

    def __init__(
        self,
        request: EngineRequest,
        prompt_tokens: int,
        pieces: list[str],
        logprobs: list[float] | None,
        parking: tuple[Park, Unpark],
    ) -> None:
        super().__init__()
        self.request = request
        self.prompt_tokens = prompt_tokens
        self.pieces = pieces
        self.logprobs = logprobs
        self.park, self.unpark = parking  # the engine's loop's
        self.top: list[TopLogprobs] | None = None
        self.reserve = prompt_tokens + request.params.max_tokens
        self.pos = 0
        self.text_so_far = ""
        self.blocks: Sequence[int] = ()
        self.emitted = 0  # characters of text already delivered
        self.pending: deque[EngineDelta] | None = None
        self.error: BaseException | None = None
        self.finish: str | None = None
        self.done = False
        self.released = False
        self.ready_at = 0.0  # no token before this time (a stall)
        self.fail: tuple[int, BaseException] | None = None  # (after tokens, error)
        # set by start_stream: what wake() calls, and whose _release close() calls
        self.on_wake: Callable[[], None] | None = None
        self.engine: SimulatedEngine | None = None
        self.group: PrefixGroup | None = None  # while a member of a prefix group here
        self.leads = False  # its group's others wait for its prefill

    def push(self, delta: EngineDelta) -> None:
        if self.pending is None:
            self.pending = deque()
        self.pending.append(delta)

    def wake(self) -> None:
        if self.on_wake is not None:
            self.on_wake()
        elif self.waiter is not None:
            self.unpark(self, None)

    def next_nowait(self) -> EngineDelta | None:
        """The next delta; ``None`` while none is queued.  Raises the request's
        error, or :class:`StopAsyncIteration` once it is over (finished or
        closed).  Never blocks."""
        if self.pending:
            return self.pending.popleft()
        if self.error is not None:
            raise self.error
        if self.done:
            raise StopAsyncIteration
        return None

    def close(self) -> None:
        """A started stream's end: the engine releases the request (aborting it
        if it still runs) before this returns; no delta is delivered after."""
        assert self.engine is not None, "close() ends a stream from start_stream()"
        self.engine._release(self)

    def __aiter__(self) -> _SimRequest:
        return self

    async def __anext__(self) -> EngineDelta:
        while True:
            delta = self.next_nowait()
            if delta is not None:
                return delta
            await self.park(self)


class _Open:
    """What :meth:`SimulatedEngine.open_stream` returns: admits the request on
    entry, releases it (aborting it if it still runs) on exit."""

    __slots__ = ("_engine", "_r", "_request")

    def __init__(self, engine: SimulatedEngine, request: EngineRequest) -> None:
        self._engine = engine
        self._request = request
        self._r: _SimRequest | None = None

    async def __aenter__(self) -> AsyncIterator[EngineDelta]:
        self._r = self._engine._admit(self._request)
        return self._r

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._r is not None:
            self._engine._release(self._r)


class SimulatedEngine:
    """Continuous-batching engine simulator (see module docstring).

    Parameters:
        responder: output source (the whole response: when a request carries a
            ``continuation`` that the output starts with, only the rest is
            generated): a string, a list of strings cycled per request,
            or ``f(SimulatedCall) -> str | SimulatedOutput``.  Defaults to a short
            reasoning line ending in ``\\boxed{digit}`` drawn from the seeded RNG.
        cost: the virtual-time :class:`CostModel`.
        max_batch_size: requests decoded together at most.
        kv_capacity: KV tokens available; a request reserves prompt + max_tokens.
        max_context: longest prompt + max_tokens accepted.
        seed: engine seed mixed into each request's RNG.
        prefix_cache_blocks: KV blocks of ``block_size`` prompt tokens kept for
            reuse (least recently used evicted; 0 = no prefix caching).  A request
            whose prompt starts with cached full blocks is prefilled (and charged
            prefill time) only for the rest, as vLLM/SGLang/TensorRT-LLM do with KV
            reuse.  As in the engines it models, a block is reusable once the
            prefill step computing it is over (prompts prefilled in the same
            step share nothing), and at least the prompt's last token is
            computed.  With a prefix cache, a :class:`PrefixGroup`'s members
            are admitted after its first one's prefill (:class:`PrefixGate`),
            so they reuse its blocks.  ``prefill_tokens`` counts the prompt tokens computed,
            ``cached_prompt_tokens`` those reused.
        block_size: prompt tokens per KV block.

    A step hands its tokens to at most :attr:`wakes_per_turn` requests per loop
    turn, with a checkpoint between the chunks: a step that advances thousands of
    requests lets the loop's other tasks (a timer, a health check, a new
    request's admission) run meanwhile instead of waiting for the whole batch.
    """

    #: requests a step advances between two checkpoints
    wakes_per_turn = 64

    def __init__(
        self,
        responder: str | Sequence[str] | Responder | None = None,
        *,
        cost: CostModel | None = None,
        max_batch_size: int = 256,
        kv_capacity: int = 1 << 20,
        max_context: int = 8192,
        seed: int = 0,
        prefix_cache_blocks: int = 0,
        block_size: int = 16,
    ) -> None:
        if prefix_cache_blocks < 0 or block_size < 1:
            raise ValueError("prefix_cache_blocks >= 0 and block_size >= 1 are required")
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if kv_capacity < 1 or max_context < 1:
            raise ValueError("kv_capacity and max_context must be >= 1")
        self._respond = _make_responder(responder)
        self.cost = cost if cost is not None else CostModel()
        self.max_batch_size = max_batch_size
        self.kv_capacity = kv_capacity
        self.max_context = max_context
        self.seed = seed
        self.prefix_cache_blocks = prefix_cache_blocks
        self.block_size = block_size
        self._cache: OrderedDict[int, None] = OrderedDict()  # block hash chain -> LRU order
        self.tokenizer = WordTokenizer()
        self._waiting: deque[_SimRequest] = deque()
        self._running: dict[int, _SimRequest] = {}
        self._kv_used = 0
        self._wakeup: anyio.Event | None = None  # made in __aenter__, in its loop
        self._gate: PrefixGate[_SimRequest] = PrefixGate(self._group_submit)
        self._held = 0  # prefix-group members held back by the gate
        self._parking: tuple[Park, Unpark] = (trio_park, trio_unpark)  # the loop's: __aenter__
        self._stalls = False  # whether a request ever stalled (SimulatedOutput.delay)
        self._index = 0
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._failure: BaseException | None = None
        #: statistics for benchmarks and tests
        self.steps = 0
        self.completed = 0
        self.failed = 0  # requests failed on cue (SimulatedOutput.error)
        self.aborted = 0
        self.peak_batch = 0
        self.prefill_tokens = 0
        self.cached_prompt_tokens = 0

    # -- Engine protocol -------------------------------------------------
    @property
    def num_active(self) -> int:
        return len(self._waiting) + len(self._running) + self._held

    @property
    def healthy(self) -> bool:
        return self._tg is not None and not self._closed and self._failure is None

    def render(self, request: EngineRequest) -> str:
        """The prompt text the model would see (chat messages rendered simply,
        then the request's ``continuation``)."""
        if request.prompt is not None:
            base = request.prompt
        elif request.prompt_token_ids is not None:
            base = self.tokenizer.decode(request.prompt_token_ids)
        else:
            assert request.messages is not None
            base = _render_chat(request.messages, request.tools) + "<assistant>\n"
        return base + (request.continuation or "")

    async def count_tokens(self, request: EngineRequest) -> int:
        """The prompt's token count with this engine's tokenizer."""
        return self.count_prompt_tokens(request)

    async def drop_kv_cache(self, drop: KVCacheDrop) -> int | None:
        """Evict the conversation's cached prompt blocks past those of its first
        ``drop.keep_messages`` messages; returns how many were cached.  Raises
        :class:`NotSupportedError` without prefix caching
        (``prefix_cache_blocks=0``)."""
        if not self.prefix_cache_blocks:
            raise NotSupportedError(
                "this SimulatedEngine keeps no prefix cache (give prefix_cache_blocks > 0)"
            )
        if self._tg is None or self._closed:
            raise EngineClosedError("engine is not running (use `async with engine:`)")
        request = drop.conversation()  # the prompt as it was cached, then the reply
        ids = self.tokenizer.encode(self.render(attrs.evolve(request, continuation=None)))
        ids += self.tokenizer.encode(request.continuation or "")
        chain = self._chain(ids)
        keep = drop.messages[: drop.keep_messages]
        kept = _render_chat(keep, drop.tools) if keep else ""
        first = -(-self.tokenizer.count(kept) // self.block_size) if kept else 0
        freed = 0
        for h in chain[first:]:
            if h in self._cache:
                del self._cache[h]
                freed += 1
        return freed

    @property
    def cached_blocks(self) -> int:
        """Prompt blocks in the prefix cache now."""
        return len(self._cache)

    def _chain(self, ids: Sequence[int]) -> list[int]:
        """Hash chain of the full ``block_size`` blocks of ``ids``."""
        chain, h = [], 0
        for start in range(0, len(ids) - self.block_size + 1, self.block_size):
            h = hash((h, *ids[start : start + self.block_size]))
            chain.append(h)
        return chain

    def count_prompt_tokens(self, request: EngineRequest) -> int:
        if request.prompt_token_ids is not None:
            return len(request.prompt_token_ids)
        return self.tokenizer.count(self.render(request))

    def check(self, request: EngineRequest) -> None:
        self._checked(request)

    def _checked(self, request: EngineRequest) -> tuple[str, int]:
        """:meth:`check`, returning the prompt as rendered and its token count."""
        prompt = self.render(request)
        if request.prompt_token_ids is not None:
            n = len(request.prompt_token_ids)
        else:
            n = self.tokenizer.count(prompt)
        check_context(n, request.params.max_tokens, self.max_context)
        need = n + request.params.max_tokens
        if need > self.kv_capacity:
            raise InvalidRequestError(
                "max_tokens", f"request needs {need} KV tokens, the engine has {self.kv_capacity}"
            )
        return prompt, n

    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError("SimulatedEngine already started")
        self._wakeup = anyio.Event()
        self._parking = parking()
        self._closed = False  # a closed engine can be started again
        self._failure = None
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._loop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tg is not None
        self._closed = True
        self._fail_all(EngineClosedError("engine closed"))
        self._tg.cancel_scope.cancel()
        tg, self._tg = self._tg, None
        await tg.__aexit__(exc_type, exc, tb)

    def open_stream(
        self, request: EngineRequest
    ) -> AbstractAsyncContextManager[AsyncIterator[EngineDelta]]:
        return _Open(self, request)

    def start_stream(self, request: EngineRequest, on_wake: Callable[[], None]) -> _SimRequest:
        """Admit ``request`` now and return its :class:`~engine_bridge.StartedStream`:
        read without a task of its own (``next_nowait()``), ``on_wake()`` is called
        in the engine's loop task whenever a delta is queued or the request
        ended; ``close()`` releases it.  Raises what ``open_stream``'s entry
        raises (a closed or failed engine, an invalid request).  Never blocks.

        ``on_wake`` must not block and must not raise; it may ``close()`` the
        stream (a consumer done with it, or cancelled)."""
        r = self._admit(request)
        r.on_wake = on_wake
        r.engine = self
        return r

    def _admit(self, request: EngineRequest) -> _SimRequest:
        """``open_stream``'s entry: check ``request`` and queue it."""
        if self._failure is not None:
            raise EngineError(f"engine is unhealthy: {self._failure}") from self._failure
        if self._tg is None or self._closed:
            raise EngineClosedError("engine is not running (use `async with engine:`)")
        r = self._new_request(request, *self._checked(request))
        group = request.group
        if group is not None and self.prefix_cache_blocks and r.prompt_tokens > self.block_size:
            r.group = group
            self._held += 1
            self._gate.enter(group, r)
            return r
        self._waiting.append(r)
        assert self._wakeup is not None
        self._wakeup.set()
        return r

    def _group_submit(self, r: _SimRequest, leads: bool) -> None:
        """(The gate) ``r`` of a prefix group goes to the scheduler's queue."""
        self._held -= 1
        r.leads = leads
        self._waiting.append(r)
        if self._wakeup is not None:
            self._wakeup.set()

    # -- fault injection -------------------------------------------------
    def inject_failure(self, error: BaseException | None = None) -> None:
        """Simulate the engine dying: every live request fails with ``error``
        (an :class:`EngineError` by default) and later requests are refused."""
        err = error if error is not None else EngineError("simulated engine failure")
        self._failure = err
        self._fail_all(err)

    # -- internals ---------------------------------------------------------
    def _new_request(self, request: EngineRequest, prompt: str, n_prompt: int) -> _SimRequest:
        index = self._index
        self._index += 1
        seed = request.params.seed if request.params.seed is not None else index
        call = SimulatedCall(prompt, request, index, seed=hash((self.seed, seed)))
        out = self._respond(call)
        if isinstance(out, str):
            out = SimulatedOutput(out)
        if not isinstance(out, SimulatedOutput) or not isinstance(out.text, str):
            raise EngineError(f"malformed engine output: {type(out).__name__} instead of text")
        # the vocabulary's strings: the replies held at once share their words
        pieces = self.tokenizer.split_shared(out.text)
        skip = _continued(pieces, request.continuation)
        logprobs: list[float] | None = None
        if request.params.num_logprobs is not None:
            if out.logprobs is not None:
                if len(out.logprobs) < len(pieces):
                    raise EngineError("responder returned fewer logprobs than tokens")
                logprobs = list(out.logprobs)[skip:]
            else:
                rng = call.rng
                logprobs = [-rng.random() * 2.0 for _ in pieces[skip:]]
        if skip:
            pieces = pieces[skip:]
        top = None
        if request.params.num_logprobs and logprobs is not None:
            top = _alternatives(out, pieces, logprobs, request.params.num_logprobs, skip)
        limit = request.params.max_tokens
        if request.params.ignore_eos and pieces and len(pieces) < limit:
            # past the end of the reply, as a model past its EOS: the reply again
            times = limit // len(pieces) + 1
            pieces = (pieces * times)[:limit]
            if logprobs is not None:
                logprobs = (logprobs * times)[:limit]
            if top is not None:
                top = (top * times)[:limit]
        r = _SimRequest(request, n_prompt, pieces, logprobs, self._parking)
        r.top = top
        if out.delay:
            r.ready_at = anyio.current_time() + out.delay
            self._stalls = True  # from now on each step looks for stalled requests
        if out.error is not None:
            r.fail = (out.error_after, out.error)
        if self.prefix_cache_blocks:
            ids = (
                list(request.prompt_token_ids)
                if request.prompt_token_ids is not None
                else self.tokenizer.encode(prompt)
            )
            r.blocks = self._chain(ids)
        return r

    def _prefill(self, r: _SimRequest, computed: list[int]) -> int:
        """Prompt tokens ``r`` must compute, after reusing its cached prefix
        blocks (at least its last token is computed); the blocks it computes
        are added to ``computed`` (cached once the step is over)."""
        if not r.blocks:
            return r.prompt_tokens
        cache = self._cache
        reused = 0
        most = (r.prompt_tokens - 1) // self.block_size
        for h in r.blocks[:most]:
            if h not in cache:
                break
            cache.move_to_end(h)
            reused += 1
        computed.extend(r.blocks[reused:])
        self.cached_prompt_tokens += reused * self.block_size
        return r.prompt_tokens - reused * self.block_size

    def _cache_blocks(self, computed: list[int]) -> None:
        """The prefill step is over: its blocks become reusable."""
        cache = self._cache
        for h in computed:
            cache[h] = None
            cache.move_to_end(h)
        while len(cache) > self.prefix_cache_blocks:
            cache.popitem(last=False)

    def _release(self, r: _SimRequest) -> None:
        if r.released:
            return
        r.released = True
        if r.group is not None:
            group, r.group, r.leads = r.group, None, False
            if self._gate.leave(group, r):
                self._held -= 1  # held back: it never reached the scheduler
        try:
            self._waiting.remove(r)
        except ValueError:
            if self._running.pop(id(r), None) is not None:
                self._kv_used -= r.reserve
        if not r.done:
            self.aborted += 1
        r.done = True
        r.pending = None
        if self._waiting and self._wakeup is not None:
            self._wakeup.set()

    def _fail_all(self, err: BaseException) -> None:
        for r in [*self._waiting, *self._running.values(), *self._gate.clear()]:
            r.error = err
            r.done = True
            r.wake()
        self._waiting.clear()
        self._running.clear()
        self._kv_used = 0
        self._held = 0

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            await anyio.sleep(seconds)
        else:
            await anyio.lowlevel.checkpoint()

    async def _loop(self) -> None:
        while True:
            if self._failure is not None or (not self._waiting and not self._running):
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                continue
            admitted = 0
            computed: list[int] = []
            leaders: list[_SimRequest] = []
            while (
                self._waiting
                and len(self._running) < self.max_batch_size
                and self._kv_used + self._waiting[0].reserve <= self.kv_capacity
            ):
                r = self._waiting.popleft()
                self._running[id(r)] = r
                self._kv_used += r.reserve
                admitted += self._prefill(r, computed)
                if r.leads:
                    leaders.append(r)
            if admitted:
                self.prefill_tokens += admitted
                await self._sleep(self.cost.prefill_time(admitted))
            if computed:
                self._cache_blocks(computed)
            for r in leaders:  # their prompts are computed: their groups' others follow
                if r.leads and r.group is not None:
                    r.leads = False
                    self._gate.prefilled(r.group)
            if not self._running:
                # Everything admitted was aborted during prefill.
                continue
            now = anyio.current_time()
            if self._stalls:
                ready = [(k, r) for k, r in self._running.items() if r.ready_at <= now]
            else:
                ready = list(self._running.items())
            if not ready:  # every running request stalls: wait for the first to wake
                first = min(r.ready_at for r in self._running.values())
                with anyio.move_on_after(first - now):
                    self._wakeup = anyio.Event()
                    await self._wakeup.wait()  # or a new request arrives
                continue
            batch = len(ready)
            self.peak_batch = max(self.peak_batch, len(self._running))
            await self._sleep(self.cost.step_time(batch))
            self.steps += 1
            chunk = self.wakes_per_turn
            for n, (key, r) in enumerate(ready, 1):
                if n % chunk == 0:
                    await anyio.lowlevel.checkpoint()  # the loop's other tasks run
                if self._running.get(key) is not r:
                    continue  # released while the step ran (or the chunk before)
                if self._step(r):
                    # (a started stream's consumer may have released it already,
                    # in its wake-up)
                    if self._running.pop(key, None) is not None:
                        self._kv_used -= r.reserve
                    if r.error is None:
                        self.completed += 1
                    else:
                        self.failed += 1

    def _step(self, r: _SimRequest) -> bool:
        """Produce one token of ``r``; return True when it finished."""
        if r.done:
            return True
        params = r.request.params
        if r.fail is not None and r.pos >= min(r.fail[0], len(r.pieces)):
            r.error = r.fail[1]  # the engine fails this request here, as on cue
            r.done = True
            r.wake()
            return True
        finish: str | None = None
        n_tok = 0
        if r.pos < len(r.pieces):
            r.pos += 1
            n_tok = 1
            if r.request.stream or params.stop:
                r.text_so_far += r.pieces[r.pos - 1]
            else:
                # nobody reads the text before the end and no stop string can
                # cut it: until the last token a token is a count
                if r.pos < len(r.pieces) and r.pos < params.max_tokens:
                    return False
                r.text_so_far = "".join(r.pieces[: r.pos])
        if r.pos >= len(r.pieces):
            finish = "length" if params.ignore_eos and r.pieces else "stop"
        elif r.pos >= params.max_tokens:
            finish = "length"
        text = r.text_so_far
        cut = first_stop(text, params.stop)
        if cut != -1:
            text = text[:cut]
            finish = "stop"
        if finish is None:  # what may be the start of a stop string waits for the next token
            text = text[: len(text) - stop_holdback(text, params.stop)]
        if finish is None and not r.request.stream:
            return False
        if r.request.stream or finish is not None:
            start_tok = r.pos - n_tok if r.request.stream else 0
            ids = tuple(self.tokenizer.ids_for(r.pieces[start_tok : r.pos]))
            lps = tuple(r.logprobs[start_tok : r.pos]) if r.logprobs is not None else None
            delta = EngineDelta(
                text=text[r.emitted :] if len(text) > r.emitted else "",
                token_ids=ids,
                logprobs=lps,
                finish_reason=finish,
                prompt_tokens=r.prompt_tokens,
                top_logprobs=tuple(r.top[start_tok : r.pos]) if r.top is not None else None,
            )
            r.emitted = max(r.emitted, len(text))
            r.push(delta)
        if finish is not None:
            r.done = True
        r.wake()
        return finish is not None


def _alternatives(
    out: SimulatedOutput, pieces: list[str], logprobs: list[float], k: int, skip: int
) -> list[TopLogprobs]:
    """Each token's ``k`` alternatives: the responder's, else the sampled token
    and made-up ones (``<alt1>``, ...) sharing the rest of the probability, each
    half the one before (a simulator's numbers, consistent: they sum to <= 1)."""
    if out.top_logprobs is not None:
        given = [tuple((str(t), float(lp)) for t, lp in alts)[:k] for alts in out.top_logprobs]
        if len(given) < len(pieces) + skip:
            raise EngineError("responder returned fewer top_logprobs than tokens")
        return given[skip : skip + len(pieces)]
    top: list[TopLogprobs] = []
    for piece, lp in zip(pieces, logprobs, strict=False):
        rest = max(0.0, 1.0 - math.exp(lp))
        alts = [(piece, lp)]
        for j in range(1, k):
            share = rest / 2**j
            if share <= 0.0:
                break  # the sampled token holds all of it
            alts.append((f"<alt{j}>", math.log(share)))
        top.append(tuple(alts))
    return top
