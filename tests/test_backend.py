"""The loop primitives the hot path uses (scaffold_actors/_backend.py): parking
an idle runner without an event object per wait, on each loop."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from scaffold_actors._backend import Parked, current_backend

LOOPS = ["trio", "asyncio"]


def run(loop: str, fn: Any) -> Any:
    return anyio.run(fn, backend=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_unpark_hands_the_value_to_the_parked_task_once(loop: str) -> None:
    async def main() -> list[object]:
        backend = current_backend()
        parked = Parked()
        got: list[object] = []

        async def waiter() -> None:
            got.append(await backend.park(parked))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert backend.unpark(parked, "job")
            assert not backend.unpark(parked, "again")  # nobody waits any more
        return got

    assert run(loop, main) == ["job"]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_cancelled_parked_task_is_sent_nothing(loop: str) -> None:
    """A runner cancelled while it waits (the runtime shutting down) stays in the
    idle list; unpark must refuse it, so the job goes to another runner."""

    async def main() -> tuple[bool, bool]:
        backend = current_backend()
        parked = Parked()
        async with anyio.create_task_group() as tg:
            tg.start_soon(backend.park, parked)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
            # cancelled, and (on asyncio) not resumed yet: refused already
            before = backend.unpark(parked, "job")
        after = backend.unpark(parked, "job")
        return before, after

    assert run(loop, main) == (False, False)


@pytest.mark.parametrize("cancelled", ["before", "after"])
def test_a_slot_given_back_as_a_waiting_requester_is_cancelled_goes_on(cancelled: str) -> None:
    """Admission (``max_in_flight``): a slot given back is handed to the first
    requester waiting.  On asyncio that requester can be cancelled
    (``task.cancel()``, as ``asyncio.wait_for`` does) just ``before`` the slot is
    given back, or just ``after`` it was handed the slot, in both cases before
    it ran again (it then resumes with the cancellation): the slot must go on
    to the next requester, not be lost."""
    import asyncio

    from scaffold_actors._backend import Slots

    async def main() -> tuple[list[str], int]:
        admission = Slots(1, current_backend())
        assert admission.take_nowait()  # the one slot is taken
        admitted: list[str] = []

        async def request(name: str) -> None:
            await admission.take()
            admitted.append(name)
            admission.give_back()

        first = asyncio.create_task(request("first"))
        await anyio.wait_all_tasks_blocked()
        second = asyncio.create_task(request("second"))
        await anyio.wait_all_tasks_blocked()
        if cancelled == "before":
            first.cancel()
        admission.give_back()
        if cancelled == "after":
            first.cancel()
        await anyio.wait_all_tasks_blocked()  # a lost slot leaves "second" blocked
        assert first.cancelled() and second.done()
        return admitted, admission.free

    assert run("asyncio", main) == (["second"], 1)


def test_loop_caller_runs_a_burst_in_order_with_one_wake_up() -> None:
    """``LoopCaller.call_soon`` from another thread: every callback runs, in order,
    and a burst queued before the loop ran any wakes the loop once; once the loop
    is gone it says so (False) and keeps nothing."""
    import threading

    import trio

    from engine_bridge._bridge import LoopCaller

    seen: list[int] = []
    wake_ups: list[int] = []
    holder: list[LoopCaller] = []

    async def main() -> None:
        caller = LoopCaller()
        holder.append(caller)
        real = caller._call

        def counted(fn: Any, *args: Any) -> None:
            wake_ups.append(1)
            real(fn, *args)

        caller._call = counted
        done = trio.Event()

        def burst() -> None:
            for i in range(100):
                caller.call_soon(seen.append, i)
            caller.call_soon(done.set)

        # the loop runs no callback while it waits for the thread (blocked in join)
        thread = threading.Thread(target=burst)
        thread.start()
        thread.join()
        await done.wait()

    trio.run(main)
    assert seen == list(range(100))
    assert len(wake_ups) == 1  # the loop ran nothing while the thread queued them
    assert holder[0].call_soon(seen.append, -1) is False and not holder[0]._queue
