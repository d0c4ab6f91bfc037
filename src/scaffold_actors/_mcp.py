"""MCP tools: a worker on the official ``mcp`` SDK (stdio and streamable HTTP).

Needs the ``mcp`` extra (``pip install scaffold-actors[mcp]``); the SDK is
imported when a worker starts, so this module imports without it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import anyio
import anyio.abc

from engine_bridge import raise_single

from ._errors import InvalidTaskError, ScaffoldError
from ._scope import current_scope
from ._tasks import Task, TaskStatus, ToolCallTask
from ._worker import Handler, Worker

__all__ = ["MCPCallTask", "MCPListTask", "MCPServerError", "MCPWorker"]

#: model-written arguments larger than this (as JSON) are refused before the call
MAX_ARGUMENT_BYTES = 64_000

ServerSpec = str | Sequence[str]


class MCPServerError(ScaffoldError):
    """An MCP server could not be reached, or failed (died, closed the
    connection) during a call.  ``server`` names it.  The worker reconnects on
    the next call; other calls are unaffected."""

    def __init__(self, server: str, message: str) -> None:
        super().__init__(f"MCP server {server!r}: {message}")
        self.server = server


@dataclasses.dataclass(eq=False)
class MCPCallTask(Task):
    """Call the MCP tool ``tool_name`` with ``args`` (TensorRT-LLM compatible).

    Outputs: ``result_str`` (the text the tool returned), ``is_error`` (the tool
    ran and reported a failure), ``result_stdout`` / ``result_stderr`` (set
    when the tool answers with a sandbox's ``{"content", "stdout", "stderr"}``
    JSON envelope, whose ``content`` is then ``result_str``; ``None`` otherwise).
    """

    worker_tag: Any = "mcp"
    tool_name: str | None = None
    args: dict[str, Any] | str | None = None  # a dict, or its JSON text (a tool call's)
    tool_call_id: str | None = None
    result_str: str | None = None
    result_stdout: str | None = None
    result_stderr: str | None = None
    is_error: bool = False

    input_fields: ClassVar[tuple[str, ...]] = ("tool_name", "args", "tool_call_id")
    output_fields: ClassVar[tuple[str, ...]] = ("result_str", "is_error")

    @staticmethod
    def create_mcptask(tool_name: str, args: dict[str, Any], worker_tag: Any) -> MCPCallTask:
        return MCPCallTask(worker_tag=worker_tag, tool_name=tool_name, args=args)

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.tool_name, str) or not self.tool_name:
            raise InvalidTaskError(f"{type(self).__name__}.tool_name", "must be a non-empty string")
        self.arguments()

    def arguments(self) -> dict[str, Any]:
        """``args`` as a dict (JSON text, as a model's tool call carries it, is
        decoded).  Raises :class:`InvalidTaskError` naming ``args`` otherwise."""
        args = self.args
        if isinstance(args, str):
            if len(args) > MAX_ARGUMENT_BYTES:
                raise InvalidTaskError(
                    "MCPCallTask.args",
                    f"{len(args)} bytes of arguments, more than {MAX_ARGUMENT_BYTES}",
                )
            try:
                args = json.loads(args or "{}")
            except ValueError as e:
                raise InvalidTaskError("MCPCallTask.args", f"not JSON: {e}") from None
        if args is None:
            return {}
        if not isinstance(args, dict):
            raise InvalidTaskError("MCPCallTask.args", f"must be a JSON object, got {args!r}")
        return args


@dataclasses.dataclass(eq=False)
class MCPListTask(Task):
    """List the tools of every server of an :class:`MCPWorker`.  Output:
    ``result_tools``, one ``{"name", "description", "input_schema", "server"}``
    dict per tool."""

    worker_tag: Any = "mcp"
    result_tools: list[dict[str, Any]] | None = None

    output_fields: ClassVar[tuple[str, ...]] = ("result_tools",)


def openai_tools(listed: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The tools an :class:`MCPListTask` listed (``result_tools``) as OpenAI
    function descriptions, the ``tools`` a chat task offers the model."""
    return [
        {
            "type": "function",
            "function": {
                "name": t["name"],
                "description": t.get("description") or "",
                "parameters": t.get("input_schema") or {"type": "object"},
            },
        }
        for t in listed or ()
    ]


class _Done:
    """An awaitable that is already done (a shutdown with nothing to close)."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


class _Standalone:
    """A worker started by ``init_in_asyncio_event_loop``: the asyncio task that
    holds its connections, and the event that lets it close them.  Awaiting it
    waits for the task (its error raised)."""

    def __init__(self, task: Any, stop: anyio.Event) -> None:
        self.task = task
        self.stop = stop

    def __await__(self) -> Generator[Any, None, None]:
        return self.task.__await__()  # type: ignore[no-any-return]


class _Connection:
    """One MCP session, owned by a task of the worker's task group (an MCP
    session is a context manager: it is entered and left in the same task)."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.session: Any = None
        self.ready = anyio.Event()
        self.close = anyio.Event()
        self.ended = anyio.Event()
        self.error: BaseException | None = None

    @property
    def alive(self) -> bool:
        return self.session is not None and not self.close.is_set() and not self.ended.is_set()


def _transport(spec: ServerSpec) -> Any:
    if isinstance(spec, str) and spec.rstrip("/").endswith("/sse"):
        from mcp.client.sse import sse_client  # an SSE endpoint (TensorRT-LLM's servers)

        return sse_client(spec)
    if isinstance(spec, str):
        from mcp.client.streamable_http import streamable_http_client

        return streamable_http_client(spec)
    from mcp import StdioServerParameters, stdio_client

    argv = list(spec)
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=dict(os.environ))
    return stdio_client(params)


#: tool results longer than this are never parsed as a sandbox envelope
MAX_ENVELOPE_CHARS = 1_000_000


def _envelope(text: str) -> tuple[str, str | None, str | None]:
    """``(content, stdout, stderr)`` of a sandbox's JSON envelope, else
    ``(text, None, None)``.  Bounded: long texts are not parsed."""
    if len(text) > MAX_ENVELOPE_CHARS or not text.lstrip().startswith("{"):
        return text, None, None
    try:
        payload = json.loads(text)
    except ValueError:
        return text, None, None
    if not isinstance(payload, dict) or not {"content", "stdout", "stderr"} <= payload.keys():
        return text, None, None
    content, out, err = payload["content"], payload["stdout"], payload["stderr"]
    if not isinstance(content, str):
        return text, None, None
    return content, out if isinstance(out, str) else None, err if isinstance(err, str) else None


class MCPWorker(Worker):
    """Serves MCP tools from one or more servers (the official ``mcp`` SDK).

    ``servers`` maps a name to a streamable-HTTP URL (``"http://host:port/mcp"``)
    or to a command that starts a stdio server (``["python", "server.py"]``).
    At start-up each server is connected and its tools listed (a tool name
    offered by two servers is an error).  It runs :class:`MCPCallTask`,
    :class:`MCPListTask` and :class:`ToolCallTask` (so a ``ReActAgent`` can use
    MCP tools: ``tools=await MCPWorker.discover(servers)``).

    Bad input is refused at submission and loses nothing: an unknown tool, or
    arguments that fail the tool's JSON schema (or exceed
    ``MAX_ARGUMENT_BYTES``), raise :class:`InvalidTaskError` before any call.
    A tool that reports a failure sets ``is_error`` (the model should see it).

    With ``per_scope=True`` every execution scope gets its own session per
    server (for stateful servers), opened on its first call and closed in
    :meth:`on_scope_end`; otherwise all calls share one session per server.
    ``max_sessions`` bounds the sessions open at once: a scope's first call
    waits (cancellably, not counted in ``connect_timeout``) for one to close.

    A tool result that is a JSON object with the fields ``content`` (a
    string), ``stdout`` and ``stderr`` (a sandbox's envelope, as Apiary's)
    fills :class:`MCPCallTask`'s ``result_str``, ``result_stdout`` and
    ``result_stderr``; any other result is ``result_str`` as is.

    Cancellation: cancelling a call cancels it on the server too (the SDK sends
    ``notifications/cancelled``).  A server that dies or closes the connection
    fails the calls in flight on it with :class:`MCPServerError` naming it;
    the next call reconnects.  A call longer than ``call_timeout`` seconds fails
    with :class:`TimeoutError`.
    """

    max_concurrency = 64
    #: connect and list the tools at start-up (a subclass for servers whose
    #: sessions are costly, such as sandboxes, lists nothing: calls then go to
    #: the first server, unchecked but for JSON and size)
    lists_tools = True

    def __init__(
        self,
        servers: Mapping[str, ServerSpec] | None = None,
        *,
        urls: Sequence[str] | None = None,
        per_scope: bool = False,
        call_timeout: float | None = 60.0,
        connect_timeout: float = 30.0,
        max_sessions: int | None = None,
    ) -> None:
        if servers is None and urls is not None:  # TensorRT-LLM's MCPWorker(urls=[...])
            servers = {f"server{i}": url for i, url in enumerate(urls)}
        if not servers:
            raise ValueError("servers must name at least one MCP server")
        for name, spec in servers.items():
            if not (isinstance(spec, str) or (isinstance(spec, Sequence) and spec)):
                raise ValueError(
                    f"servers[{name!r}] must be a URL or a non-empty command, got {spec!r}"
                )
        if max_sessions is not None and max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1 or None, got {max_sessions!r}")
        self.servers = dict(servers)
        self.per_scope = per_scope
        self.max_sessions = max_sessions
        self._slots = anyio.Semaphore(max_sessions) if max_sessions is not None else None
        self.call_timeout = call_timeout
        self.connect_timeout = connect_timeout
        self._tools: dict[str, tuple[str, Any]] = {}  # tool -> (server, mcp Tool)
        self._validators: dict[str, Any] = {}  # tool -> its compiled argument schema
        self._connections: dict[tuple[str, str | None], _Connection] = {}
        self._locks: dict[tuple[str, str | None], anyio.Lock] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._standalone: _Standalone | None = None

    def __repr__(self) -> str:
        return f"MCPWorker({sorted(self.servers)})"

    # -- life ------------------------------------------------------------------
    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        try:
            async with self._sessions():
                yield
        except BaseExceptionGroup as group:
            raise_single(group)

    @asynccontextmanager
    async def _sessions(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                tools: dict[str, tuple[str, Any]] = {}
                for server in self.servers if self.lists_tools else ():
                    conn = await self._connection(server, None)
                    listed = await conn.session.list_tools()
                    for tool in listed.tools:
                        if tool.name in tools:
                            raise ValueError(
                                f"tool {tool.name!r} is offered by both {tools[tool.name][0]!r} "
                                f"and {server!r}"
                            )
                        tools[tool.name] = (server, tool)
                self._tools = tools
                self._validators = {}
                yield
            finally:
                for conn in self._connections.values():
                    conn.close.set()
                self._connections.clear()
                self._tg = None

    async def init_in_asyncio_event_loop(self) -> None:
        """Connect now, in the running event loop, so that :meth:`run_task`
        works without a runtime (TensorRT-LLM compatible); :meth:`shutdown`
        closes the connections.  Returns once every server's tools are listed;
        raises what connecting raised (the worker is then not started).
        Cancelling the call cancels the start."""
        if self._standalone is not None:
            raise RuntimeError("this MCPWorker is already started")
        ready = anyio.Event()
        stop = anyio.Event()
        failure: list[BaseException] = []

        async def hold() -> None:
            try:
                async with self.lifespan():
                    ready.set()
                    await stop.wait()
            except BaseException as exc:  # (reported to the starter, or to shutdown)
                failure.append(exc)
                ready.set()
                raise

        import asyncio

        task = asyncio.get_running_loop().create_task(hold())
        self._standalone = _Standalone(task, stop)
        try:
            await ready.wait()
        except BaseException:
            stop.set()
            task.cancel()
            self._standalone = None
            raise
        if failure:
            self._standalone = None
            await asyncio.gather(task, return_exceptions=True)
            raise failure[0]

    def shutdown(self) -> Any:
        """Close what :meth:`init_in_asyncio_event_loop` opened.  The closing
        happens in the worker's event loop: ``await worker.shutdown()`` waits
        for it (and raises a closing error); a plain ``worker.shutdown()``
        starts it.  Nothing to do (and nothing to await) otherwise."""
        standalone, self._standalone = self._standalone, None
        if standalone is None:
            return _Done()
        standalone.stop.set()
        return standalone

    @classmethod
    def init_with_urls(cls, urls: Sequence[str]) -> MCPWorker:
        """A worker over streamable-HTTP servers (TensorRT-LLM's spelling); they
        are named ``server0``, ``server1``, ..."""
        return cls({f"server{i}": url for i, url in enumerate(urls)})

    @classmethod
    async def discover(cls, servers: Mapping[str, ServerSpec]) -> dict[str, str]:
        """Connect to ``servers`` once and return ``{tool: description}`` (with
        the argument names), the ``tools`` a ``ReActAgent`` offers the model."""
        worker = cls(servers)
        async with worker.lifespan():
            return worker.specs()

    def specs(self) -> dict[str, str]:
        """Tool name -> one-line description with its arguments (after start-up)."""
        out = {}
        for name, (_, tool) in self._tools.items():
            props = (tool.input_schema or {}).get("properties", {})
            first = (tool.description or name).strip().splitlines()[0]
            out[name] = f"{first} Arguments: {', '.join(props) or 'none'}."
        return out

    def transport(self, server: str, scope_id: str | None) -> Any:
        """The SDK transport (an async context manager giving the two streams)
        for a session to ``server`` on behalf of ``scope_id`` (``None``: the
        shared session).  Override to shape the connection per scope."""
        return _transport(self.servers[server])

    async def _own(self, conn: _Connection, transport: Any) -> None:
        from mcp import ClientSession

        try:
            async with (
                transport as streams,
                ClientSession(streams[0], streams[1]) as session,
            ):
                await session.initialize()
                conn.session = session
                conn.ready.set()
                await conn.close.wait()
        except Exception as exc:
            conn.error = exc
        finally:
            if self._slots is not None:
                self._slots.release()
            conn.ended.set()
            conn.ready.set()

    async def _connection(self, server: str, scope_id: str | None) -> _Connection:
        key = (server, scope_id)
        conn = self._connections.get(key)
        if conn is not None and conn.alive:
            return conn
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            conn = self._connections.get(key)
            if conn is not None and conn.alive:
                return conn
            if self._tg is None:
                raise MCPServerError(server, "the worker is not started")
            transport = self.transport(server, scope_id)
            if self._slots is not None:
                await self._slots.acquire()  # released when the session ends
            conn = _Connection(server)
            self._tg.start_soon(self._own, conn, transport)
            try:
                with anyio.move_on_after(self.connect_timeout):
                    await conn.ready.wait()
            except BaseException:  # cancelled while connecting: the session is nobody's
                conn.close.set()
                raise
            if not conn.alive:
                conn.close.set()
                why = conn.error or f"no answer within {self.connect_timeout:g} s"
                raise MCPServerError(server, f"cannot connect: {why}")
            self._connections[key] = conn
            return conn

    async def on_scope_end(self, scope_id: str) -> None:
        """Close the sessions this scope opened (``per_scope=True``)."""
        if not self.per_scope:
            return
        for key in [k for k in self._connections if k[1] == scope_id]:
            conn = self._connections.pop(key)
            self._locks.pop(key, None)
            conn.close.set()
            await conn.ended.wait()

    def stats(self) -> Mapping[str, int]:
        """``{"mcp_sessions": n}``: sessions open now."""
        return {"mcp_sessions": sum(1 for c in self._connections.values() if c.alive)}

    @property
    def healthy(self) -> bool:
        return all(c.alive for (_, scope), c in self._connections.items() if scope is None)

    # -- tasks -------------------------------------------------------------------
    def check_task(self, task: Task) -> None:
        super().check_task(task)
        if isinstance(task, (MCPCallTask, ToolCallTask)):
            name = task.tool_name or ""
            args = task.arguments() if isinstance(task, MCPCallTask) else task.arguments
            self._check_call(type(task).__name__, name, args)

    def _check_call(self, kind: str, name: str, args: Mapping[str, Any]) -> None:
        listed = self.lists_tools
        if listed and name not in self._tools:
            raise InvalidTaskError(
                f"{kind}.tool_name",
                f"unknown tool {name!r}; the servers offer: {sorted(self._tools)}",
            )
        field = f"{kind}.{'args' if kind == 'MCPCallTask' else 'arguments'}"
        try:
            size = len(json.dumps(args))
        except (TypeError, ValueError) as e:
            raise InvalidTaskError(field, f"must be JSON: {e}") from None
        if size > MAX_ARGUMENT_BYTES:
            raise InvalidTaskError(
                field, f"{size} bytes of arguments, more than {MAX_ARGUMENT_BYTES}"
            )
        if not listed:
            return
        import jsonschema

        validator = self._validators.get(name)
        if validator is None:  # compiled once per tool, not per call
            schema = self._tools[name][1].input_schema or {"type": "object"}
            validator = self._validators[name] = jsonschema.Draft202012Validator(schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(dict(args)))
        if error is not None:
            where = "/".join(map(str, error.absolute_path)) or "(top level)"
            raise InvalidTaskError(field, f"{name}: {where}: {error.message}")

    async def _call(self, name: str, args: Mapping[str, Any]) -> tuple[str, bool]:
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED

        server = self._tools[name][0] if name in self._tools else next(iter(self.servers))
        scope = current_scope.get()
        conn = await self._connection(server, scope.scope_id if self.per_scope and scope else None)
        try:
            if self.call_timeout is None:
                result = await conn.session.call_tool(name, dict(args))
            else:
                with anyio.fail_after(self.call_timeout):
                    result = await conn.session.call_tool(name, dict(args))
        except MCPError as e:
            if e.code != CONNECTION_CLOSED:
                return f"{name} failed: {e.message}", True
            conn.close.set()  # the next call reconnects
            raise MCPServerError(server, f"connection lost during {name}: {e.message}") from e
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream) as e:
            conn.close.set()
            raise MCPServerError(server, f"connection lost during {name}") from e
        text = "\n".join(c.text for c in result.content if getattr(c, "type", None) == "text")
        return text, bool(result.is_error)

    async def call_handler(self, task: MCPCallTask) -> TaskStatus:
        text, task.is_error = await self._call(task.tool_name or "", task.arguments())
        task.result_str, task.result_stdout, task.result_stderr = _envelope(text)
        return TaskStatus.SUCCESS

    async def tool_call_handler(self, task: ToolCallTask) -> TaskStatus:
        task.result_str, task.is_error = await self._call(task.tool_name or "", task.arguments)
        return TaskStatus.SUCCESS

    async def list_handler(self, task: MCPListTask) -> TaskStatus:
        task.result_tools = [
            {
                "name": name,
                "description": tool.description,
                "input_schema": tool.input_schema,
                "server": server,
            }
            for name, (server, tool) in self._tools.items()
        ]
        return TaskStatus.SUCCESS

    task_handlers: ClassVar[dict[type[Task], Handler]] = {
        MCPCallTask: call_handler,
        MCPListTask: list_handler,
        ToolCallTask: tool_call_handler,
    }
