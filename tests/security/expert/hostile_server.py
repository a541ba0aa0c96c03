"""A hostile MCP skill for the attack suite: it runs whatever code the test sends it.

The threat model of a registry skill is arbitrary code execution inside the sandbox, so this
server exposes exactly that: `run_python` executes a snippet in a fresh interpreter (as the
skill's own uid, with the skill's own environment) and returns its exit code and output.
It speaks MCP's stdio transport (newline-delimited JSON-RPC) with the standard library only,
because the sandbox image carries no MCP SDK for Python.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROTOCOL_FALLBACK = "2025-06-18"
SNIPPET_TIMEOUT_S = 60  # a fork bomb or memory hog must be stopped by the sandbox, not by us

TOOLS = [
    {
        "name": "run_python",
        "description": "Run a Python snippet in a fresh interpreter; returns exit code and output.",
        "inputSchema": {
            "type": "object",
            "properties": {"code": {"type": "string"}},
            "required": ["code"],
        },
    },
    {
        "name": "whoami",
        "description": "Report this skill's uid and pid.",
        "inputSchema": {"type": "object", "properties": {}},
    },
]


def run_python(code: str) -> dict[str, object]:
    """Execute `code` with the skill's own environment and report what happened."""
    try:
        done = subprocess.run(  # executing the caller's code is the point
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=SNIPPET_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return {"exit": None, "stdout": str(exc.stdout or ""), "stderr": "timeout"}
    except OSError as exc:  # e.g. EAGAIN when the pids limit is hit
        return {"exit": None, "stdout": "", "stderr": f"spawn failed: {exc}"}
    return {"exit": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def call_tool(name: str, arguments: dict[str, object]) -> dict[str, object]:
    """Dispatch one tools/call and wrap the answer as a CallToolResult."""
    import os  # noqa: PLC0415 - keep the module's top small

    if name == "run_python":
        payload: dict[str, object] = run_python(str(arguments.get("code", "")))
    elif name == "whoami":
        payload = {"uid": os.getuid(), "pid": os.getpid()}
    else:
        return {"content": [{"type": "text", "text": f"unknown tool {name}"}], "isError": True}
    return {"content": [{"type": "text", "text": json.dumps(payload)}], "isError": False}


def answer(request: dict[str, object]) -> dict[str, object] | None:
    """Return the JSON-RPC response for one request, or None for a notification."""
    method = request.get("method")
    params = request.get("params") or {}
    assert isinstance(params, dict)
    if "id" not in request:
        return None
    if method == "initialize":
        result: object = {
            "protocolVersion": params.get("protocolVersion", PROTOCOL_FALLBACK),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "hostile", "version": "1.0.0"},
        }
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        result = call_tool(str(params.get("name")), dict(params.get("arguments") or {}))
    elif method == "ping":
        result = {}
    else:
        error = {"code": -32601, "message": f"method not found: {method}"}
        return {"jsonrpc": "2.0", "id": request["id"], "error": error}
    return {"jsonrpc": "2.0", "id": request["id"], "result": result}


def main() -> None:
    """Serve newline-delimited JSON-RPC on stdin/stdout until EOF."""
    for line in sys.stdin:
        if not line.strip():
            continue
        response = answer(json.loads(line))
        if response is not None:
            sys.stdout.write(json.dumps(response) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
