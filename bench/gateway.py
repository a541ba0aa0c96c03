"""Gateway overhead and warm start, for the bundled example Expert.

Paths to the same skill (the everything server's `echo`, in the example image):
- direct: the skill's own MCP client session over the exec's stdio (no gateway);
- gateway in process: an MCP client -> the gateway's MCP server (in-memory transport) -> the
  same session, in the 2025-11-25 era (initialize handshake) and the 2026-07-28 era;
- HTTP: `perstack-sandbox run demo --http 0`, the product's own process (its event loop, its
  HTTP server), with its own sandbox, called over streamable HTTP on 127.0.0.1 with the bearer
  token, in both eras, by each client of `_clients` (Python SDK, TypeScript SDK, and a
  minimal keep-alive HTTP/1.1 JSON-RPC client), each on one keep-alive connection.
- client floor: each client, the same way, against a trivial responder in its own process that
  answers every POST at once with a canned JSON body (`_http_floor`): what that client and
  loopback TCP cost by themselves, the least overhead any server could show with it.

The paths take turns: ROUNDS rounds, each making CALLS/ROUNDS calls on every path, so that a
shared machine's load falls on all of them alike.

Overhead = path p50 - direct p50. Server's share = HTTP p50 - that client's floor p50 (the
server process: HTTP, the SDK's transport, the gateway, its skill session, less what the
direct path also pays). Goal: overhead <= 1 ms for the HTTP path in both eras, judged on the
minimal client (README, "Gateway"). Warm start = from `open_expert` (image cached) to the first
tools/list answer (goal: <= 2.5 s).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio
from mcp import Client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _clients import (  # noqa: E402 - bench/ is the script's own folder
    ARGS,
    ERA_MODES,
    TIMERS,
    CallTimer,
    Timer,
    floor_process,
    gateway_process,
    sdk_version,
)

from perstack_sandbox import engine  # noqa: E402 - after the path tweak
from perstack_sandbox.config import load_config  # noqa: E402
from perstack_sandbox.gateway import make_server, new_token  # noqa: E402
from perstack_sandbox.launch import LaunchOptions, open_expert  # noqa: E402
from perstack_sandbox.plan import plan  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Sequence

CONFIG = ROOT / "examples" / "perstack.toml"
EXPERT = "demo"
WARMUP: Final = 50
STARTS: Final = 3
GOAL_OVERHEAD_MS: Final = 1.0
GOAL_WARM_START_S: Final = 2.5
JUDGED_CLIENT: Final = "raw"  # what the goal is judged on (README, "Gateway")
DIRECT: Final = "direct (stdio)"


def quiet(_line: str) -> None:
    """Drop build progress."""


def percentile(samples: list[float], q: float) -> float:
    """Return the q-quantile (0..1) of the samples, in the samples' unit."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


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


async def call_paths(clients: Sequence[str], calls: int, rounds: int) -> dict[str, list[float]]:
    """Per-call latencies of every path, taken in turns."""
    options = LaunchOptions(config_path=CONFIG, expert=EXPERT, progress=quiet)
    token = new_token()
    async with open_expert(options) as gateway, contextlib.AsyncExitStack() as stack:
        skill = gateway.skills["everything"]
        timers: dict[tuple[str, str, str], Timer] = {
            (DIRECT, "", ""): CallTimer(functools.partial(skill.call_tool, "echo", ARGS))
        }
        for era, mode in ERA_MODES.items():
            client = await stack.enter_async_context(Client(make_server(gateway), mode=mode))
            timers["gateway in process", era, ""] = CallTimer(
                functools.partial(client.call_tool, "echo", ARGS)
            )
        url = stack.enter_context(gateway_process(CONFIG, EXPERT, token))
        floor = stack.enter_context(floor_process())
        for name in clients:
            for era in ERA_MODES:
                enter = stack.enter_async_context
                timers["HTTP", era, name] = await enter(TIMERS[name](url, era, token))
                timers["floor", era, name] = await enter(TIMERS[name](floor, era, None))
        samples: dict[tuple[str, str, str], list[float]] = {key: [] for key in timers}
        for timer in timers.values():
            await timer.timed(WARMUP)
        for _ in range(rounds):
            for key, timer in timers.items():
                samples[key] += await timer.timed(calls // rounds)
    return {" | ".join(key): values for key, values in samples.items()}


def report(paths: dict[str, list[float]], clients: Sequence[str]) -> None:
    """Print the table: p50, p99, overhead over direct stdio, floor and server's share."""
    base = percentile(paths[f"{DIRECT} |  | "], 0.5)
    print(f"{'path':<36} {'p50 ms':>7} {'p99 ms':>7} {'overhead':>9} {'floor':>7} {'server':>7}")
    for name, samples in paths.items():
        if name.startswith("floor"):
            continue
        p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
        floor_key = "floor" + name.removeprefix("HTTP")
        floor, share = "-", "-"
        if name.startswith("HTTP"):
            floor_p50 = percentile(paths[floor_key], 0.5)
            floor, share = f"{floor_p50:.3f}", f"{p50 - floor_p50:.3f}"
        label = name.removesuffix(" |  | ").removesuffix(" | ")
        print(f"{label:<36} {p50:>7.3f} {p99:>7.3f} {p50 - base:>9.3f} {floor:>7} {share:>7}")
    for name in clients:
        for era in ERA_MODES:
            overhead = percentile(paths[f"HTTP | {era} | {name}"], 0.5) - base
            verdict = "met" if overhead <= GOAL_OVERHEAD_MS else "NOT MET"
            judged = " (the goal's row)" if name == JUDGED_CLIENT else ""
            goal = f"goal <= {GOAL_OVERHEAD_MS} ms"
            print(f"HTTP {era} {name}: overhead {overhead:.3f} ms, {goal}: {verdict}{judged}")


def report_starts(starts: list[float]) -> None:
    """Print the warm start line."""
    best = min(starts)
    verdict = "ok" if best <= GOAL_WARM_START_S else "OVER GOAL"
    runs = ", ".join(f"{s:.2f}" for s in starts)
    print(f"warm start to tools/list: best {best:.2f} s of [{runs}] (goal <= 2.5 s): {verdict}")


def main() -> None:
    """Build the example image if needed, then measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per path (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="turns the paths take (default 5)")
    parser.add_argument(
        "--clients",
        default=",".join(TIMERS),
        help=f"HTTP clients, comma-separated, of {', '.join(TIMERS)} (default: all)",
    )
    parser.add_argument("--no-warm-start", action="store_true", help="skip the warm starts")
    args = parser.parse_args()
    clients = [name for name in args.clients.split(",") if name]
    if unknown := set(clients) - set(TIMERS):
        parser.error(f"unknown clients: {', '.join(sorted(unknown))}")
    config, _ = load_config(CONFIG)
    engine.ensure_expert_image(plan(config, EXPERT), progress=quiet)
    if "typescript" in clients:
        print(f"TypeScript SDK client {sdk_version()} (from the npm registry)")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    async def measure() -> tuple[dict[str, list[float]], list[float]]:
        starts = [] if args.no_warm_start else [await warm_start() for _ in range(STARTS)]
        return await call_paths(clients, args.calls, args.rounds), starts

    paths, starts = anyio.run(measure)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    report(paths, clients)
    if starts:
        report_starts(starts)


if __name__ == "__main__":
    main()
