"""Gateway overhead and warm start, for the bundled example Expert.

Measured in one sandbox, against the same skill process (the everything server's `echo`):
- direct: the skill's own MCP client session over the exec's stdio (no gateway);
- gateway: an MCP client -> the gateway's MCP server (in-process transport) -> the same session,
  in the 2025-11-25 era (initialize handshake) and the 2026-07-28 era;
- gateway over HTTP: the same, through streamable HTTP on 127.0.0.1 with the bearer token, in
  both eras, each on one keep-alive connection.
Overhead = path p50 - direct p50 (goal: <= 1 ms, for the HTTP path in both eras). Warm start =
from `open_expert` (image cached) to the first tools/list answer (goal: <= 2.5 s).

Also the client's floor: the same Python SDK client, the same way, against a trivial responder
that answers every POST at once with a canned JSON body (`_http_floor`). No server can be
faster than that, so `floor p50` is the least overhead any gateway could show on the HTTP
rows with this client: the rest of an HTTP row's overhead is the server's share.
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _http_floor import trivial_server  # noqa: E402 - bench/ is the script's own folder

from perstack_sandbox import engine  # noqa: E402 - after the path tweak
from perstack_sandbox.config import load_config  # noqa: E402
from perstack_sandbox.gateway import (  # noqa: E402
    Gateway,
    make_server,
    new_token,
    serve_http,
)
from perstack_sandbox.launch import LaunchOptions, open_expert  # noqa: E402
from perstack_sandbox.plan import plan  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

CONFIG = ROOT / "examples" / "perstack.toml"
EXPERT = "demo"
CALLS = 1000
WARMUP = 50
STARTS = 3
GOAL_OVERHEAD_MS = 1.0
GOAL_WARM_START_S = 2.5
ARGS = {"message": "bench"}
DIRECT = "direct (stdio)"
FLOOR = "client floor"
ERAS = {"2025-11-25": "legacy", "2026-07-28": "auto"}  # the Python client's modes


def quiet(_line: str) -> None:
    """Drop build progress."""


def percentile(samples: list[float], q: float) -> float:
    """Return the q-quantile (0..1) of the samples, in the samples' unit."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed(call: Callable[[], Awaitable[object]], count: int) -> list[float]:
    """Run `call` WARMUP times untimed, then `count` times; return durations in ms."""
    for _ in range(WARMUP):
        await call()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def warm_start() -> float:
    """Seconds from open_expert (cached image) to the first tools/list answer."""
    options = LaunchOptions(config_path=CONFIG, expert=EXPERT, progress=quiet)
    started = time.perf_counter()
    async with (
        open_expert(options) as gateway,
        Client(make_server(gateway), mode="legacy") as client,
    ):
        await client.list_tools()
        return time.perf_counter() - started


async def call_paths() -> dict[str, list[float]]:
    """Per-call latencies of the direct path and the gateway's paths, both eras."""
    options = LaunchOptions(config_path=CONFIG, expert=EXPERT, progress=quiet)
    paths: dict[str, list[float]] = {}
    async with open_expert(options) as gateway:
        skill = gateway.skills["everything"]
        paths[DIRECT] = await timed(functools.partial(skill.call_tool, "echo", ARGS), CALLS)
        for era, mode in ERAS.items():
            async with Client(make_server(gateway), mode=mode) as client:
                call = functools.partial(client.call_tool, "echo", ARGS)
                paths[f"gateway {era}"] = await timed(call, CALLS)
        for era, mode in ERAS.items():
            paths[f"HTTP {era}"] = await _over_http(gateway, mode)
    for era, mode in ERAS.items():
        paths[f"{FLOOR} {era}"] = await _client_floor(mode)
    return paths


async def _client_floor(mode: str) -> list[float]:
    """Per-call latencies of the Python SDK client against the trivial responder."""
    async with (
        trivial_server() as url,
        httpx2.AsyncClient() as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        return await timed(functools.partial(client.call_tool, "echo", ARGS), CALLS)


async def _over_http(gateway: Gateway, mode: str) -> list[float]:
    token, ready, stop, urls = new_token(), anyio.Event(), anyio.Event(), []

    def on_ready(url: str) -> None:
        urls.append(url)
        ready.set()

    async with anyio.create_task_group() as group:
        group.start_soon(
            functools.partial(
                serve_http, gateway, port=0, token=token, on_ready=on_ready, stop=stop
            )
        )
        await ready.wait()
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx2.AsyncClient(headers=headers) as http,
            Client(streamable_http_client(urls[0], http_client=http), mode=mode) as client,
        ):
            samples = await timed(functools.partial(client.call_tool, "echo", ARGS), CALLS)
        stop.set()
    return samples


def report(paths: dict[str, list[float]], starts: list[float]) -> None:
    """Print the table of latencies and ratios against the direct path."""
    base = statistics.median(paths[DIRECT])
    print(f"{'path':<24} {'p50 ms':>8} {'p99 ms':>8} {'p50 ratio':>10} {'p50 overhead ms':>16}")
    for name, samples in paths.items():
        p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
        if name.startswith(FLOOR):  # no skill behind it: its whole p50 is client overhead
            print(f"{name:<24} {p50:>8.3f} {p99:>8.3f} {'-':>10} {p50:>16.3f}")
            continue
        print(f"{name:<24} {p50:>8.3f} {p99:>8.3f} {p50 / base:>9.2f}x {p50 - base:>16.3f}")
    for era in ERAS:
        overhead = percentile(paths[f"HTTP {era}"], 0.5) - base
        verdict = "ok" if overhead <= GOAL_OVERHEAD_MS else "OVER GOAL"
        goal = f"(goal <= {GOAL_OVERHEAD_MS} ms)"
        floor = percentile(paths[f"{FLOOR} {era}"], 0.5)
        shares = f"client floor {floor:.3f} ms, server's share {overhead - floor:.3f} ms"
        print(f"HTTP {era} p50 overhead {overhead:.3f} ms {goal}: {verdict} ({shares})")
    best = min(starts)
    verdict = "ok" if best <= GOAL_WARM_START_S else "OVER GOAL"
    runs = ", ".join(f"{s:.2f}" for s in starts)
    goal = f"(goal <= {GOAL_WARM_START_S} s)"
    print(f"warm start to tools/list: best {best:.2f} s of [{runs}] {goal}: {verdict}")


def main() -> None:
    """Build the example image if needed, then measure and print the table."""
    config, _ = load_config(CONFIG)
    engine.ensure_expert_image(plan(config, EXPERT), progress=quiet)

    async def measure() -> tuple[dict[str, list[float]], list[float]]:
        starts = [await warm_start() for _ in range(STARTS)]
        return await call_paths(), starts

    paths, starts = anyio.run(measure)
    report(paths, starts)


if __name__ == "__main__":
    main()
