"""A bounded math-verify: answers a model wrote are compared in a child process
that is killed when a comparison overruns its time bound.

math-verify parses LaTeX with sympy; a hostile answer (``9^{9^{9}}``) makes sympy
compute for minutes inside C code, where no signal or thread can stop it.  So the
comparison runs in a long-lived child (``python _mathcheck.py``, which imports
math-verify once), one line of JSON per question and per answer over pipes; the
parent waits for the answer with a deadline and kills the child if it does not
come (a new child is started for the next question).
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from typing import IO

__all__ = ["MathChecker"]

log = logging.getLogger("scaffold_actors.methods")


class MathChecker:
    """Compares answers with math-verify in a child process, bounded in time.

    ``equivalent(a, b)`` blocks the calling thread for at most ``timeout`` seconds
    after the child is ready (starting the child, which imports sympy, is bounded
    by ``start_timeout``); a comparison that runs out, or a child that dies, is
    "not equivalent" and is logged, and so is one where math-verify raised (the
    exception named in the log line; ``errors`` counts them): a vote still
    needs a verdict, but never a silent one.  Thread-safe: comparisons are
    serialised.
    """

    def __init__(self, timeout: float = 5.0, start_timeout: float = 120.0) -> None:
        self.timeout = timeout
        self.start_timeout = start_timeout
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self.timeouts = 0
        self.errors = 0

    def _child_command(self) -> list[str]:
        return [sys.executable, os.path.abspath(__file__)]

    def _start(self) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(
            self._child_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert child.stdout is not None
        if _read_line(child.stdout, self.start_timeout) != b"ready\n":
            _kill(child)
            raise RuntimeError(f"the math-verify child did not start within {self.start_timeout} s")
        return child

    def equivalent(self, a: str, b: str) -> bool:
        with self._lock:
            if self._child is None or self._child.poll() is not None:
                self._child = self._start()
            child = self._child
            assert child.stdin is not None and child.stdout is not None
            try:
                child.stdin.write(json.dumps([a, b]).encode() + b"\n")
                child.stdin.flush()
                line = _read_line(child.stdout, self.timeout)
            except OSError:
                line = None
            if line is None:
                self.timeouts += 1
                log.warning(
                    "math-verify gave no verdict on %r vs %r within %s s: not equivalent",
                    a[:80],
                    b[:80],
                    self.timeout,
                )
                _kill(child)
                self._child = None
                return False
            verdict = json.loads(line)
            if isinstance(verdict, dict):  # math-verify raised on this pair
                self.errors += 1
                log.warning(
                    "math-verify failed on %r vs %r (%s): not equivalent",
                    a[:80],
                    b[:80],
                    str(verdict.get("error"))[:200],
                )
                return False
            return bool(verdict)

    def close(self) -> None:
        with self._lock:
            if self._child is not None:
                _kill(self._child)
                self._child = None


def _read_line(stream: IO[bytes], timeout: float) -> bytes | None:
    """One line from a pipe within ``timeout`` seconds, or None."""
    deadline = time.monotonic() + timeout
    fd = stream.fileno()
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return None  # the child died
        buf += chunk
    return buf


def _kill(child: subprocess.Popen[bytes]) -> None:
    child.kill()
    child.wait()
    for stream in (child.stdin, child.stdout):
        if stream is not None:
            stream.close()


def _serve() -> None:  # pragma: no cover - runs in the child
    """The child: answer ``[a, b]`` lines with ``true``/``false`` lines."""
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    from math_verify import parse, verify

    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        a, b = json.loads(line)
        try:
            # the child's main thread: math-verify's own (signal) timeouts work here
            # as a first bound; the parent's kill is the hard one
            pa = parse(_as_latex(a), parsing_timeout=3)
            pb = parse(_as_latex(b), parsing_timeout=3)
            same = bool(pa and pb and verify(pa, pb, timeout_seconds=3))
        except Exception as exc:  # reported to the parent, which logs it
            out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:500]}).encode() + b"\n")
            out.flush()
            continue
        out.write(b"true\n" if same else b"false\n")
        out.flush()


def _as_latex(answer: str) -> str:
    s = answer.strip()
    return s if s.startswith("$") or "\\boxed" in s else f"${s}$"


if __name__ == "__main__":  # pragma: no cover
    _serve()
