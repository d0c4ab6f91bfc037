"""Deterministic tests of your own controllers and agents.

The pieces our own test suite uses, as API (as trio ships ``MockClock`` and
``Sequencer``):

* :func:`simulated_runtime`: your controller on a :class:`~engine_bridge.SimulatedEngine`
  answered by a :class:`Script` (by prompt, by regex, by call order; stalls and
  failures on cue; a chosen finishing order), with tools and a reward model
  faked from plain functions (:func:`tool_fakes`, :class:`RewardFake`), and a
  leak check when it ends (:func:`assert_nothing_left`);
* :func:`virtual_clock`: trio's autojumping ``MockClock``: sleeps, stalls and
  timeouts take no real time, so a ten-minute agent runs in milliseconds;
* :func:`replay_runtime`: a run recorded once on a real model (``trace=True``)
  replayed with no model;
* a pytest plugin (installed with the package): the fixtures ``script``,
  ``scaffold_runtime`` and ``no_thread_leaks``.

See docs/testing.md.
"""

from __future__ import annotations

from ._runtime import (
    LeakError,
    RewardFake,
    SimulatedRuntime,
    assert_nothing_left,
    replay_runtime,
    simulated_runtime,
    tool_fakes,
    virtual_clock,
)
from ._script import Answer, Script, fail, reply, stall

__all__ = [
    "Answer",
    "LeakError",
    "RewardFake",
    "Script",
    "SimulatedRuntime",
    "assert_nothing_left",
    "fail",
    "replay_runtime",
    "reply",
    "simulated_runtime",
    "stall",
    "tool_fakes",
    "virtual_clock",
]
