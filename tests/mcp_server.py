"""A real MCP server for the tests (the official SDK's MCPServer, once FastMCP).

    python tests/mcp_server.py stdio
    python tests/mcp_server.py http PORT      # streamable HTTP at http://127.0.0.1:PORT/mcp
    python tests/mcp_server.py sse PORT       # SSE at http://127.0.0.1:PORT/sse (as Apiary)

Tools: ``add(a, b)``; ``fail()`` (reports an error); ``slow(seconds)``;
``started()`` / ``cancelled()`` (how many ``slow`` calls the server saw cancelled);
``count()`` (calls of ``count`` in this process: over stdio, state per session); ``die()``
(the process exits at once); ``connections()`` (over SSE: the query strings of the
SSE connections open now, and of all ever opened, as JSON); ``sandbox_run(cmd)``
(Apiary's ``{"content", "stdout", "stderr"}`` envelope).  With ``TOOL_PREFIX=x_`` every tool name
starts with ``x_``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer

PREFIX = os.environ.get("TOOL_PREFIX", "")  # two servers with distinct tool names
app = MCPServer("scaffold-test-tools")
_state = {"cancelled": 0, "started": 0, "count": 0}


@app.tool(name=PREFIX + "add")
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@app.tool(name=PREFIX + "fail")
def fail() -> str:
    """Always fails."""
    raise ValueError("this tool always fails")


@app.tool(name=PREFIX + "slow")
async def slow(seconds: float) -> str:
    """Sleep for a while."""
    _state["started"] += 1
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        _state["cancelled"] += 1
        raise
    return "done"


@app.tool(name=PREFIX + "started")
def started() -> int:
    """How many slow calls started."""
    return _state["started"]


@app.tool(name=PREFIX + "cancelled")
def cancelled() -> int:
    """How many slow calls were cancelled."""
    return _state["cancelled"]


@app.tool(name=PREFIX + "count")
def count() -> int:
    """Calls of count in this server process (over stdio, a session is a process)."""
    _state["count"] += 1
    return _state["count"]


@app.tool(name=PREFIX + "die")
def die() -> str:
    """Exit the server process at once."""
    os._exit(3)


_open: dict[str, int] = {}
_seen: list[str] = []


@app.tool(name=PREFIX + "connections")
def connections() -> str:
    """The SSE connections open now and ever opened (their query strings)."""
    return json.dumps({"open": sorted(_open), "seen": _seen})


@app.tool(name=PREFIX + "sandbox_run")
def sandbox_run(cmd: str) -> str:
    """Run a command in the sandbox (answers with Apiary's envelope)."""
    return json.dumps({"content": f"ran {cmd}", "stdout": f"{cmd}: ok\n", "stderr": ""})


def tracked(asgi: Any) -> Any:
    """The SSE app, recording each SSE connection's query string while it is open."""

    async def app_(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/sse":
            await asgi(scope, receive, send)
            return
        query = scope["query_string"].decode()
        _seen.append(query)
        _open[query] = _open.get(query, 0) + 1
        try:
            await asgi(scope, receive, send)
        finally:
            _open[query] -= 1
            if not _open[query]:
                del _open[query]

    return app_


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        app.run("stdio")
    elif sys.argv[1] == "sse":
        import uvicorn

        uvicorn.run(
            tracked(app.sse_app(host="127.0.0.1")),
            host="127.0.0.1",
            port=int(sys.argv[2]),
            log_level="warning",
        )
    else:
        app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
