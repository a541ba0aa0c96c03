"""An agent runtime in miniature, run by the wheel's venv: `run` driven by the SDK's stdio client.

Usage: python -I sdk_client.py CLI CONFIG. It starts `CLI run demo -c CONFIG` through the
official MCP Python SDK, lists the tools, calls `echo`, prints one JSON line of what it saw, then
stays connected (mid-run) until it is killed. It imports only what the venv holds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

CALL_TIMEOUT_S = 300  # the sandbox starts from cached images, on 2 busy cores


async def main(cli: str, config: str) -> None:
    """List and call through `run`, report, then wait to be killed."""
    server = StdioServerParameters(
        command=cli, args=["run", "demo", "-c", config], env=dict(os.environ), cwd=Path.cwd()
    )
    async with Client(server, mode="legacy") as client:
        with anyio.fail_after(CALL_TIMEOUT_S):
            names = sorted(tool.name for tool in (await client.list_tools()).tools)
            echoed = await client.call_tool("echo", {"message": "from the wheel"})
        text = "".join(getattr(block, "text", "") for block in echoed.content)
        package = importlib.util.find_spec("perstack_sandbox")
        report = {
            "tools": names,
            "echo": text,
            "package": package.origin if package is not None else None,
            "checkout_importable": importlib.util.find_spec("orchestrator") is not None,
        }
        print(json.dumps(report), flush=True)  # noqa: T201 - the report
        await anyio.Event().wait()  # mid-run: the test kills this process here


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:3])
