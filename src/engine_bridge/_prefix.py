"""Admission of a prefix group: its first member alone, the others once that
member's prompt is prefilled (the engine's prefix cache then holds it)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from ._types import PrefixGroup

__all__ = ["PrefixGate"]

T = TypeVar("T")


class _Group(Generic[T]):
    __slots__ = ("held", "leader", "members", "prefilled")

    def __init__(self, leader: T) -> None:
        self.leader: T | None = leader
        self.prefilled = False
        self.held: deque[T] = deque()
        self.members = 1  # in this engine: held, or handed to it and not yet ended


class PrefixGate(Generic[T]):
    """Per engine: holds a :class:`PrefixGroup`'s later members until its first
    member's prompt is prefilled, then hands them to the engine together.

    Engines batch the prompts that arrive together into one prefill step, and
    a prefix cache holds a block only once a step has computed it: samples of
    one prompt admitted together each compute the whole prompt.  Admitted
    after the first one's prefill, each computes only what its cached blocks
    do not cover (the prompt's last partial block, and whatever follows the
    shared prefix).

    ``submit(item, leads)`` hands an item to the engine (never blocks; called
    from :meth:`enter`, :meth:`prefilled` and :meth:`leave`).  The engine calls
    :meth:`prefilled` once a leading item's prompt is computed (its first
    output), and :meth:`leave` exactly once when any member ends for any
    reason.  All calls happen in one thread (the event loop's).

    Cancellation: a held member that leaves never reached the engine
    (:meth:`leave` says so: nothing to abort there); a leader that leaves before
    its prefill hands leadership to the first held member, which is submitted
    at once.  Nothing else of the group is touched.
    """

    __slots__ = ("_groups", "_submit")

    def __init__(self, submit: Callable[[T, bool], None]) -> None:
        self._submit = submit
        self._groups: dict[PrefixGroup, _Group[T]] = {}

    @property
    def held(self) -> int:
        """Members held back now, in every group."""
        return sum(len(g.held) for g in self._groups.values())

    def enter(self, group: PrefixGroup, item: T) -> None:
        """``item`` of ``group`` arrives: submitted now (as the leader when it is
        the group's first here, or after the prefill), or held."""
        g = self._groups.get(group)
        if g is None:
            self._groups[group] = _Group(item)
            self._submit(item, True)
            return
        g.members += 1
        if g.prefilled:
            self._submit(item, False)
        else:
            g.held.append(item)

    def prefilled(self, group: PrefixGroup) -> None:
        """The leader's prompt is computed: the members held are submitted."""
        g = self._groups.get(group)
        if g is None or g.prefilled:
            return
        g.prefilled = True
        g.leader = None
        held, g.held = g.held, deque()
        for item in held:
            self._submit(item, False)

    def leave(self, group: PrefixGroup, item: T) -> bool:
        """``item`` ended (finished, failed, cancelled).  True when it was still
        held: it never reached the engine."""
        g = self._groups.get(group)
        if g is None:
            return False
        g.members -= 1
        was_held = False
        if g.leader is item:
            g.leader = None
            if g.held:  # the prefix is not computed yet: the next member leads
                g.leader = g.held.popleft()
                self._submit(g.leader, True)
        elif not g.prefilled:
            try:
                g.held.remove(item)
                was_held = True
            except ValueError:
                pass
        if g.members <= 0:
            del self._groups[group]
        return was_held

    def clear(self) -> list[T]:
        """The engine is gone: forget every group; returns the members that
        were held (they fail with the engine)."""
        held = [item for g in self._groups.values() for item in g.held]
        self._groups.clear()
        return held
