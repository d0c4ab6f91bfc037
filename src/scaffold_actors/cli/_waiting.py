"""Saying that a long step is under way (an engine start, a conversion)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import click

__all__ = ["waiting"]


@contextmanager
def waiting(what: str, quiet: bool, every: float = 10.0) -> Iterator[None]:
    """Say on stderr that ``what`` is under way while the body runs: on a
    terminal a spinner; elsewhere (a pipe, a log file) the line ``what...`` at
    once and ``what: N s so far`` every ``every`` seconds until the body ends.
    The lines come from a daemon thread, so a body that blocks (an engine
    loading a model) does not stop them; the body's exception passes through."""
    if quiet:
        yield
        return
    if sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status(f"{what}..."):
            yield
        return
    click.echo(f"{what}...", err=True)
    done = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not done.wait(every):
            click.echo(f"{what}: {time.monotonic() - started:.0f} s so far", err=True)

    thread = threading.Thread(target=beat, name="scaffold-waiting", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
