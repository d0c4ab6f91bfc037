"""Tools for agents: a worker that serves any async function as a tool, and a
sandboxed Python-execution tool."""

from __future__ import annotations

import functools
import inspect
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

import anyio
import attrs

from . import _sandbox
from ._errors import InvalidTaskError
from ._sandbox import landlock_abi
from ._tasks import Task, TaskStatus, ToolCallTask
from ._worker import Handler, Worker

__all__ = ["PythonTool", "ToolWorker", "network_isolation_available"]

ToolFn = Callable[..., Awaitable[Any]]


class ToolWorker(Worker):
    """Serves :class:`ToolCallTask` with registered async functions.

    ``ToolWorker({"add": add, "python": PythonTool()})`` or
    ``worker.register(fn, name=None, description=None)``.  A tool is called with
    the task's ``arguments`` as keyword arguments; its return value, as a string,
    is ``result_str``.  Arguments that do not fit the tool's signature, or an
    exception raised by the tool, give ``is_error=True`` with the message as the
    result (an agent shows it to the model); an unknown ``tool_name`` is rejected
    at submission with :class:`InvalidTaskError`.  Cancelling the task cancels
    the tool call.
    """

    def __init__(
        self, tools: Mapping[str, ToolFn] | None = None, *, max_concurrency: int = 8
    ) -> None:
        self.max_concurrency = max_concurrency
        self._tools: dict[str, ToolFn] = {}
        self._descriptions: dict[str, str] = {}
        for name, fn in (tools or {}).items():
            self.register(fn, name=name)

    def register(
        self, fn: ToolFn, *, name: str | None = None, description: str | None = None
    ) -> ToolFn:
        """Add ``fn`` (an async function, or an object with an async ``__call__``)
        as a tool; usable as a decorator.  The description defaults to its docstring."""
        call = fn if inspect.iscoroutinefunction(fn) else getattr(fn, "__call__", None)  # noqa: B004
        if call is None or not inspect.iscoroutinefunction(call):
            raise TypeError(f"a tool must be an async function, got {fn!r}")
        name = name or getattr(fn, "name", None) or getattr(fn, "__name__", None)
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"tool name must be an identifier, got {name!r}")
        if name in self._tools:
            raise ValueError(f"tool {name!r} is registered twice")
        self._tools[name] = fn
        doc = description or getattr(fn, "description", None) or inspect.getdoc(fn) or ""
        params = ", ".join(inspect.signature(call).parameters)
        self._descriptions[name] = (
            f"{doc.strip().splitlines()[0] if doc.strip() else name} Arguments: {params}."
        )
        return fn

    def specs(self) -> dict[str, str]:
        """Tool name -> one-line description with its argument names (for prompts)."""
        return dict(self._descriptions)

    def check_task(self, task: Task) -> None:
        super().check_task(task)
        if isinstance(task, ToolCallTask) and task.tool_name not in self._tools:
            raise InvalidTaskError(
                "ToolCallTask.tool_name",
                f"unknown tool {task.tool_name!r}; registered: {sorted(self._tools)}",
            )

    async def call_tool(self, task: ToolCallTask) -> TaskStatus:
        fn = self._tools[task.tool_name or ""]
        try:
            inspect.signature(fn).bind(**task.arguments)
        except TypeError as e:
            task.result_str, task.is_error = f"bad arguments for {task.tool_name}: {e}", True
            return TaskStatus.SUCCESS
        try:
            result = await fn(**task.arguments)
        except Exception as e:
            task.result_str, task.is_error = f"{type(e).__name__}: {e}", True
        else:
            task.result_str, task.is_error = str(result), False
        return TaskStatus.SUCCESS

    task_handlers: ClassVar[dict[type[Task], Handler]] = {ToolCallTask: call_tool}


@attrs.frozen
class PythonTool:
    """Run Python code in a fresh subprocess and return what it printed (and,
    when the code ends with a bare expression, that value's repr, as a Python
    prompt shows it).

    The code runs with the interpreter's isolated mode (``-I``: no user site,
    no environment variables), in a new empty temporary directory that is its
    working directory and is deleted afterwards, with an empty environment, in
    its own process group, under resource limits: ``memory_mb`` of address
    space, ``timeout`` seconds of wall time (then the whole group is killed) and
    of CPU time, ``max_file_mb`` per written file.  Output (stdout then stderr)
    is cut to ``max_output`` characters; a non-zero exit adds ``exit code N``.
    Cancelling the call kills the process group.

    With ``confine_writes`` (the default) a Landlock ruleset (Linux >= 5.13)
    stops the code and its children from creating, writing, truncating, renaming
    or removing anything outside its directory (``/dev/null`` excepted); reading
    stays allowed.  With ``isolate_network`` (the default) the code runs in a new
    network namespace with no interface up (``unshare --user --map-root-user
    --net``, where :func:`network_isolation_available`) and, on kernels with
    Landlock ABI >= 4, is also denied every TCP connect and bind.  Where Landlock
    also scopes them (ABI >= 6) it cannot signal processes outside the sandbox
    nor reach abstract Unix sockets.  A protection that this system cannot give
    is refused when the tool is created (:class:`OSError`), never silently skipped:
    pass ``confine_writes=False`` or ``isolate_network=False`` to run without it.
    """

    name: ClassVar[str] = "python"
    description: ClassVar[str] = (
        "Run Python code and return what it prints (a last bare expression's value is printed)."
    )
    timeout: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    confine_writes: bool = True
    isolate_network: bool = True
    memory_mb: int = attrs.field(default=512, validator=attrs.validators.ge(0))
    max_file_mb: int = attrs.field(default=16, validator=attrs.validators.ge(0))
    max_output: int = attrs.field(default=4000, validator=attrs.validators.ge(1))

    def __attrs_post_init__(self) -> None:
        if self.confine_writes and landlock_abi() < 1:
            raise OSError(
                "PythonTool cannot confine writes here: the kernel offers no Landlock "
                "(Linux >= 5.13 with Landlock enabled); PythonTool(confine_writes=False) "
                "runs without that protection"
            )
        if self.isolate_network and not (network_isolation_available() or landlock_abi() >= 4):
            raise OSError(
                "PythonTool cannot isolate the network here: neither unprivileged network "
                "namespaces nor Landlock ABI >= 4 are available; "
                "PythonTool(isolate_network=False) runs without that protection"
            )

    async def __call__(self, code: str) -> str:
        if not isinstance(code, str):
            raise TypeError("code must be a string")
        with tempfile.TemporaryDirectory(prefix="scaffold-python-") as workdir:
            script = os.path.join(workdir, "main.py")
            await anyio.Path(script).write_text(code, encoding="utf-8")
            cmd = [
                sys.executable, "-I", "-B", _sandbox.__file__,
                str(self.memory_mb * 2**20), str(int(self.timeout) + 1),
                str(self.max_file_mb * 2**20), str(int(self.confine_writes)),
                str(int(self.isolate_network and landlock_abi() >= 4)), script,
            ]  # fmt: skip
            if self.isolate_network and network_isolation_available():
                cmd = [*_UNSHARE, *cmd]
            process = await anyio.open_process(
                cmd,
                cwd=workdir,
                env={"PATH": os.defpath, "HOME": workdir, "TMPDIR": workdir},
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            timed_out = False
            try:
                with anyio.move_on_after(self.timeout) as scope:
                    out, err = await _communicate(process)
                timed_out = scope.cancelled_caught
            finally:
                if process.returncode is None:
                    _kill_group(process.pid)
                    with anyio.CancelScope(shield=True):
                        await process.wait()
        if timed_out:
            return f"error: timed out after {self.timeout:g} s"
        text = out.decode(errors="replace") + err.decode(errors="replace")
        if len(text) > self.max_output:
            text = (
                text[: self.max_output] + f"\n... ({len(text) - self.max_output} more characters)"
            )
        if process.returncode:
            text += f"\nexit code {process.returncode}"
        return text


async def _communicate(process: Any) -> tuple[bytes, bytes]:
    chunks: dict[str, list[bytes]] = {"out": [], "err": []}

    async def read(stream: Any, key: str) -> None:
        async for chunk in stream:
            chunks[key].append(chunk)

    async with anyio.create_task_group() as tg:
        tg.start_soon(read, process.stdout, "out")
        tg.start_soon(read, process.stderr, "err")
    await process.wait()
    return b"".join(chunks["out"]), b"".join(chunks["err"])


_UNSHARE = ["unshare", "--user", "--map-root-user", "--net"]


@functools.cache
def network_isolation_available() -> bool:
    """Whether this system lets an unprivileged process enter a new network
    namespace (``unshare`` present and user namespaces enabled); blocks for the
    first call (a probe subprocess), then cached."""
    if shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run([*_UNSHARE, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
