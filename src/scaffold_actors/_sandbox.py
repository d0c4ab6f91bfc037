"""The Python tool's sandbox: Landlock rules and resource limits, applied by the
launcher in the child process before the untrusted code runs.

This file is imported by the parent (to probe what the kernel supports) and run as
a script by the child (``python -I -B _sandbox.py ...``), so it uses only the
standard library.

Landlock (Linux >= 5.13) lets an unprivileged process restrict itself and its
descendants for good: once ``restrict_self`` returns, no later code in the process,
ctypes included, can lift the rules.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

__all__ = ["landlock_abi", "main"]

_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446  # the same on every architecture
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# filesystem rights that change something (reading and executing stay allowed)
_FS_WRITE_FILE = 1 << 1
_FS_REMOVE_DIR, _FS_REMOVE_FILE = 1 << 4, 1 << 5
_FS_MAKE = sum(1 << b for b in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
_FS_REFER = 1 << 13  # ABI 2: link or rename across directories
_FS_TRUNCATE = 1 << 14  # ABI 3
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


@functools.cache
def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers, 0 where it has none (not
    Linux, too old, disabled at boot, or blocked by a seccomp filter)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        version = int(_libc().syscall(_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(version, 0)


def _fail(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"landlock {what}: {os.strerror(err)}")


def confine(workdir: str, *, writes: bool, network: bool) -> None:
    """Restrict this process for good: with ``writes``, nothing outside ``workdir``
    (and ``/dev/null``) may be created, written, truncated, renamed or removed;
    with ``network`` (ABI >= 4), no TCP connection or bind; with ABI >= 6, no
    signal to a process outside the sandbox and no abstract Unix socket outside it.
    Raises :class:`OSError` if the kernel refuses."""
    abi = landlock_abi()
    if abi < 1:
        raise OSError("Landlock is not available")
    write = _FS_WRITE_FILE | _FS_REMOVE_DIR | _FS_REMOVE_FILE | _FS_MAKE
    if abi >= 2:
        write |= _FS_REFER
    if abi >= 3:
        write |= _FS_TRUNCATE
    attr = _RulesetAttr(
        handled_access_fs=write if writes else 0,
        handled_access_net=(_NET_BIND_TCP | _NET_CONNECT_TCP) if network and abi >= 4 else 0,
        scoped=(_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0,
    )
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    libc = _libc()
    ruleset = libc.syscall(_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        _fail("create_ruleset")
    try:
        if writes:
            for path, allowed in ((workdir, write), (os.devnull, _FS_WRITE_FILE)):
                if path == os.devnull and abi >= 3:
                    allowed |= _FS_TRUNCATE
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                try:
                    rule = _PathBeneathAttr(allowed_access=allowed, parent_fd=fd)
                    if libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0):
                        _fail(f"add_rule {path}")
                finally:
                    os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
            _fail("no_new_privs")
        if libc.syscall(_RESTRICT_SELF, ruleset, 0):
            _fail("restrict_self")
    finally:
        os.close(ruleset)


def main(argv: list[str]) -> None:
    """``_sandbox.py MEMORY CPU FSIZE WRITES NETWORK SCRIPT``: limit, confine, run."""
    import resource

    mem, cpu, fsize = (int(x) for x in argv[:3])
    writes, network = argv[3] == "1", argv[4] == "1"
    script = argv[5]
    if mem > 0:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))
    if writes or network:
        confine(os.path.dirname(script), writes=writes, network=network)
    sys.argv = [script]
    run_like_a_repl(script)


def run_like_a_repl(script: str) -> None:
    """Run ``script`` as ``__main__``; when its last statement is a bare
    expression, print that value's repr (unless ``None``), as a Python prompt or
    a notebook cell does: ``2**20 - 1`` shows ``1048575`` without a print()."""
    import ast

    with open(script, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=script)
    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    if last is not None:
        tree.body.pop()
    namespace: dict[str, object] = {"__name__": "__main__", "__file__": script}
    exec(compile(tree, script, "exec"), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), script, "eval"), namespace)
        if value is not None:
            print(repr(value))


if __name__ == "__main__":
    main(sys.argv[1:])
