"""The HTTP clients and server processes `bench/gateway.py` times, each behind one interface.

Every client makes `echo` calls, one at a time, on one keep-alive connection, and returns each
call's duration in ms:
- `python`: the official MCP Python SDK client (`mcp.Client` over its streamable HTTP
  transport and `httpx2`), in the bench's own event loop;
- `typescript`: the official TypeScript SDK client, installed from the npm registry at bench
  time, in a node process of its own (it times itself);
- `raw`: `_raw_client.RawClient`, a minimal keep-alive HTTP/1.1 JSON-RPC client (no SDK, no
  event loop): the cheapest client a host could be.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import httpx2
from _raw_client import RawClient
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

HERE = Path(__file__).resolve().parent
ARGS: Final = {"message": "bench"}
TS_SDK: Final = "@modelcontextprotocol/client"
# launch.TOKEN_ENV: `run --http` takes its token from there (a name, not a secret)
TOKEN_ENV: Final = "PERSTACK_SANDBOX_TOKEN"  # noqa: S105
ERA_MODES: Final = {"2025-11-25": "legacy", "2026-07-28": "auto"}  # the SDK clients' modes
START_TIMEOUT_S: Final = 300  # a cold image build would come first
NPM_TIMEOUT_S: Final = 600


class Timer(Protocol):
    """One client connected to one endpoint in one era."""

    async def timed(self, count: int) -> list[float]:
        """Make `count` sequential calls; return their durations in ms."""
        ...


class CallTimer:
    """Calls made in the bench's own event loop: an MCP SDK session, in process or over HTTP."""

    def __init__(self, call: Callable[[], Awaitable[object]]) -> None:
        """Time `call` (one `echo` call)."""
        self._call = call

    async def timed(self, count: int) -> list[float]:
        """Make `count` sequential calls; return their durations in ms."""
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            await self._call()
            samples.append((time.perf_counter() - started) * 1000)
        return samples


class RawTimer:
    """The minimal keep-alive client (blocking; nothing else runs while it is timed)."""

    def __init__(self, client: RawClient) -> None:
        """Time calls of an opened `RawClient`."""
        self._client = client

    async def timed(self, count: int) -> list[float]:
        """Make `count` sequential calls; return their durations in ms."""
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            self._client.call_tool("echo", ARGS)
            samples.append((time.perf_counter() - started) * 1000)
        return samples


class TypeScriptTimer:
    """The TypeScript SDK client, in its own node process, which times its own calls."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        """Drive a `_ts_client.mjs` process that said `ready`."""
        self._process = process

    async def timed(self, count: int) -> list[float]:
        """Make `count` sequential calls; return their durations in ms."""
        assert self._process.stdin is not None  # noqa: S101 - opened with PIPE
        assert self._process.stdout is not None  # noqa: S101
        self._process.stdin.write(f"{count}\n")
        self._process.stdin.flush()
        return [float(sample) for sample in json.loads(self._process.stdout.readline())]


@contextlib.asynccontextmanager
async def python_timer(url: str, era: str, token: str | None) -> AsyncIterator[Timer]:
    """Yield a Python SDK client of `url` in `era`."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http), mode=ERA_MODES[era]) as client,
    ):
        yield CallTimer(functools.partial(client.call_tool, "echo", ARGS))


@contextlib.asynccontextmanager
async def raw_timer(url: str, era: str, token: str | None) -> AsyncIterator[Timer]:
    """Yield a minimal keep-alive client of `url` in `era`."""
    client = RawClient(url, era, token)
    try:
        client.open()
        yield RawTimer(client)
    finally:
        client.close()


@contextlib.asynccontextmanager
async def typescript_timer(url: str, era: str, token: str | None) -> AsyncIterator[Timer]:
    """Yield a TypeScript SDK client of `url` in `era` (its npm folder made on first use)."""
    script = npm_folder() / "_ts_client.mjs"
    env = os.environ | ({"MCP_BEARER_TOKEN": token} if token else {})
    # A blocking start is fine here: nothing else runs while the bench sets its clients up.
    with subprocess.Popen(  # noqa: ASYNC220
        ["node", str(script), url, ERA_MODES[era]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    ) as process:
        assert process.stdout is not None  # noqa: S101 - opened with PIPE
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the TypeScript client did not connect to {url}")
        try:
            yield TypeScriptTimer(process)
        finally:
            assert process.stdin is not None  # noqa: S101
            process.stdin.close()
            process.wait(timeout=30)


TIMERS: Final = {"python": python_timer, "typescript": typescript_timer, "raw": raw_timer}


@functools.cache
def npm_folder() -> Path:
    """Install the TypeScript SDK client from the npm registry into a fresh folder, once."""
    folder = Path(tempfile.mkdtemp(prefix="bench-gateway-npm-"))
    npm = ["npm", "--no-audit", "--no-fund"]
    subprocess.run([*npm, "init", "-y"], cwd=folder, check=True, capture_output=True)
    install = [*npm, "install", TS_SDK]
    subprocess.run(install, cwd=folder, check=True, capture_output=True, timeout=NPM_TIMEOUT_S)
    (folder / "_ts_client.mjs").write_bytes((HERE / "_ts_client.mjs").read_bytes())
    return folder


def sdk_version() -> str:
    """Return the installed TypeScript SDK client's version."""
    manifest = npm_folder() / "node_modules" / TS_SDK / "package.json"
    return str(json.loads(manifest.read_text())["version"])


@contextlib.contextmanager
def gateway_process(config: Path, expert: str, token: str) -> Iterator[str]:
    """Run `perstack-sandbox run EXPERT --http 0`, the product's own process; yield its URL."""
    command = [str(Path(sys.executable).with_name("perstack-sandbox")), "run", expert]
    command += ["--config", str(config), "--http", "0"]
    with _serving(command, os.environ | {TOKEN_ENV: token}, stream="stderr") as url:
        yield url


@contextlib.contextmanager
def floor_process() -> Iterator[str]:
    """Run the trivial responder (`_http_floor.py`) in a process of its own; yield its URL."""
    with _serving([sys.executable, str(HERE / "_http_floor.py")], dict(os.environ)) as url:
        yield url


@contextlib.contextmanager
def _serving(command: list[str], env: dict[str, Any], stream: str = "stdout") -> Iterator[str]:
    pipes = {stream: subprocess.PIPE}
    with subprocess.Popen(command, env=env, text=True, **pipes) as process:
        lines = getattr(process, stream)
        try:
            url = _url_from(lines, command)
            # Drained from now on, so that a chatty server never blocks on a full pipe.
            threading.Thread(target=lines.read, daemon=True).start()
            yield url
        finally:
            process.terminate()
            process.wait(timeout=START_TIMEOUT_S)


def _url_from(lines: Any, command: list[str]) -> str:  # noqa: ANN401 - a text pipe
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = lines.readline()
        if not line:
            break
        if found := re.search(r"(http://127\.0\.0\.1:\d+/mcp)", line):
            return found.group(1)
    raise RuntimeError(f"no URL from {' '.join(command)}")
