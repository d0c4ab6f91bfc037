"""Load generation strategies for :func:`async_scaffolding_benchmark`
(TensorRT-LLM's ``tensorrt_llm.scaffolding.load_generation_strategy``).

A strategy says when each request is sent (``request_times()``: absolute
``time.time()`` instants, one per request) and how many may run at once
(``get_semaphore()``).  The semaphores are anyio's, so a benchmark runs under
asyncio and trio alike.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import AsyncIterator
from typing import Any, Self

import anyio
import attrs

__all__ = [
    "ConcurrentStrategy",
    "ConstantRateStrategy",
    "LoadGenerationStrategy",
    "PoissonRateStrategy",
    "SynchronousStrategy",
    "ThroughputStrategy",
]


class _NoLimit:
    """A semaphore that never waits (a strategy without a concurrency limit)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


def _positive(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{type(inst).__name__}.{attribute.name} must be > 0, got {value!r}")


@attrs.define
class LoadGenerationStrategy:
    """Base of the strategies: ``start_time`` is set on the first
    ``request_times()`` call; subclasses yield the send instants from it."""

    strategy_type: str = "base"
    start_time: float | None = None

    def get_semaphore(self) -> Any:
        """What bounds the requests in flight (``async with``); unlimited here."""
        return _NoLimit()

    async def request_times(self) -> AsyncIterator[float]:
        """The instant (``time.time()``) each next request is to be sent."""
        if self.start_time is None:
            self.start_time = time.time()
        async for instant in self._times(self.start_time):
            yield instant

    async def _times(self, start: float) -> AsyncIterator[float]:
        raise NotImplementedError
        yield start  # (an async generator)

    def __str__(self) -> str:
        return self.strategy_type


@attrs.define
class SynchronousStrategy(LoadGenerationStrategy):
    """One request at a time, each sent as soon as the previous one ended."""

    strategy_type: str = "synchronous"

    def get_semaphore(self) -> Any:
        return anyio.Semaphore(1)

    async def _times(self, start: float) -> AsyncIterator[float]:
        while True:
            yield time.time()


@attrs.define
class ConcurrentStrategy(LoadGenerationStrategy):
    """``concurrency`` clients, each sending its next request when its last ended."""

    concurrency: int = attrs.field(kw_only=True, validator=_positive)
    strategy_type: str = "concurrent"

    def get_semaphore(self) -> Any:
        return anyio.Semaphore(self.concurrency)

    async def _times(self, start: float) -> AsyncIterator[float]:
        while True:
            yield time.time()

    def __str__(self) -> str:
        return f"{self.strategy_type}@{self.concurrency}"


@attrs.define
class ThroughputStrategy(LoadGenerationStrategy):
    """Every request sent at once, at most ``max_concurrency`` running (if given)."""

    strategy_type: str = "throughput"
    max_concurrency: int | None = attrs.field(default=None, validator=_positive)

    def get_semaphore(self) -> Any:
        return _NoLimit() if self.max_concurrency is None else anyio.Semaphore(self.max_concurrency)

    async def _times(self, start: float) -> AsyncIterator[float]:
        while True:
            yield start


@attrs.define
class ConstantRateStrategy(LoadGenerationStrategy):
    """``rate`` requests a second at even intervals; ``initial_burst`` sends
    ``floor(rate)`` at the start first."""

    rate: float = attrs.field(kw_only=True, validator=_positive)
    initial_burst: bool = False
    max_concurrency: int | None = attrs.field(default=None, validator=_positive)
    strategy_type: str = "constant"

    def get_semaphore(self) -> Any:
        return _NoLimit() if self.max_concurrency is None else anyio.Semaphore(self.max_concurrency)

    async def _times(self, start: float) -> AsyncIterator[float]:
        step = 1.0 / self.rate
        if self.initial_burst:
            for _ in range(math.floor(self.rate)):
                yield start
            start += step
        n = 0
        while True:
            yield start + n * step
            n += 1

    def __str__(self) -> str:
        return f"{self.strategy_type}@{self.rate:.2f}"


@attrs.define
class PoissonRateStrategy(LoadGenerationStrategy):
    """Requests at exponentially distributed intervals, ``rate`` a second on
    average (seeded by ``random_seed``); ``initial_burst`` as for the constant rate."""

    rate: float = attrs.field(kw_only=True, validator=_positive)
    initial_burst: bool = False
    max_concurrency: int | None = attrs.field(default=None, validator=_positive)
    random_seed: int = 42
    strategy_type: str = "poisson"

    def get_semaphore(self) -> Any:
        return _NoLimit() if self.max_concurrency is None else anyio.Semaphore(self.max_concurrency)

    async def _times(self, start: float) -> AsyncIterator[float]:
        for _ in range(math.floor(self.rate) if self.initial_burst else 1):
            yield start
        rng = random.Random(self.random_seed)
        instant = start
        while True:
            instant += rng.expovariate(self.rate)
            yield instant

    def __str__(self) -> str:
        return f"{self.strategy_type}@{self.rate:.2f}"
