"""Service start-up: a run claimed from a warm pool, a run of its own, and `run` as a process.

Side by side in one run, each as a ratio to the floor: a bare `docker run -i --rm` of the
example Expert's slowest skill in its own image, from the spawn to its first tools/list (the
MCP SDK's stdio client; no sandbox, proxy or gateway). Measured, interleaved:
- pool: `open_run(..., pool=pool)` on a full `WarmPool` until `list_tools` answers (claim,
  grant over the proxy's control channel, skills start) (goal: at most 1.15x the floor);
- library: `open_run(...)` with no pool, until `list_tools` answers (goal: at most 1.5x);
- process: `perstack-sandbox run demo` spawned, driven by the SDK's stdio client, until its
  tools/list answers (goal: at most 1.5x the floor).
The pool refills before the next row. Beside the times: the CPU-seconds of each start,
machine-wide and per group (`_cpu`: this process, the spawned run, the engine, the skills' and the
proxy's containers, kernel threads, the rest), against the budget of 1.5x the floor on every
core: a row whose own CPU is over it cannot meet 1.5x by any ordering.

With `--concurrent N` (0: skip), N runs claim from one pool of N in one process at once, as a
service would: time until all listed their tools, host memory per sandbox without the skills'
own processes (the N warm sandboxes' containers, measured before any skill starts, plus the
process and its reaper after all are ready, divided by N; goal at most 60 MB), `echo` p50/p99
with every run calling at once, and the objects of those runs left after all closed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import docker
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import _cpu  # noqa: E402
from scale import _children, _container_memory, _rss, leftovers_of, percentile  # noqa: E402

from perstack_sandbox import engine, state  # noqa: E402 - after the path tweak
from perstack_sandbox.config import load_config  # noqa: E402
from perstack_sandbox.plan import plan  # noqa: E402
from perstack_sandbox.pool import WarmPool  # noqa: E402
from perstack_sandbox.run import open_run  # noqa: E402

if TYPE_CHECKING:
    from typing import TextIO

    from perstack_sandbox.run import Run

CONFIG = ROOT / "examples" / "perstack.toml"
EXPERT = "demo"
POOL_GOAL = 1.15
PROCESS_GOAL = 1.5
MEMORY_GOAL_MB = 60
ECHO_CALLS = 10
RUN_LABEL = "perstack-sandbox.run"
FIRST_SKILL_UID = 10001


def example_image() -> tuple[str, dict[str, list[str]]]:
    """Build (or reuse) the example's image; return it and each packaged skill's argv."""
    config, _ = load_config(CONFIG)
    expert_plan = plan(config, EXPERT)
    image = engine.ensure_expert_image(expert_plan, progress=lambda _line: None)
    # The local egress probe needs the Expert's folder mounted; the packaged skills are slower.
    argvs = {s.name: list(s.argv) for s in expert_plan.skills if s.package is not None}
    return image, argvs


Sample = tuple[float, dict[str, float]]  # seconds to the first tools/list; CPU-s per group


async def floor_once(image: str, argv: list[str]) -> Sample:
    """Seconds from `docker run -i --rm IMAGE ARGV` to its first tools/list answer; CPU."""
    user = ["--user", str(FIRST_SKILL_UID), "-e", "HOME=/tmp"]
    label = ["--label", _cpu.FLOOR_LABEL]  # tells its cgroup apart in the CPU accounting
    server = StdioServerParameters(
        command="docker", args=["run", "-i", "--rm", *label, *user, image, *argv]
    )
    before = _cpu.snapshot()
    started = time.perf_counter()
    with open(os.devnull, "w") as errlog:  # noqa: PTH123, ASYNC230 - /dev/null, no wait
        async with Client(stdio_client(server, errlog=errlog), mode="legacy") as client:
            await client.list_tools()
            return _sample(started, before)


def _sample(started: float, before: _cpu.Snapshot) -> Sample:
    """Return the seconds since `started` and the CPU since `before` (the row still runs)."""
    seconds = time.perf_counter() - started
    return seconds, _cpu.usage(before, _cpu.snapshot())


async def library_once(pool: WarmPool | None) -> Sample:
    """Seconds from `open_run` (claiming from `pool`, when given) to its first tools/list; CPU."""
    if pool is not None:
        await pool.wait_ready()  # a full pool, as a service keeps it between requests
    before = _cpu.snapshot()
    started = time.perf_counter()
    async with open_run(CONFIG, EXPERT, pool=pool) as run:
        await run.list_tools()
        return _sample(started, before)


async def process_once() -> Sample:
    """Seconds from spawning `perstack-sandbox run` to its first tools/list answer; CPU."""
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "perstack_sandbox", "run", EXPERT, "-c", str(CONFIG)],
        env=dict(os.environ),
        cwd=str(ROOT),
    )
    before = _cpu.snapshot()
    started = time.perf_counter()
    with open(os.devnull, "w") as errlog:  # noqa: PTH123, ASYNC230 - /dev/null, no wait
        async with Client(stdio_client(server, errlog=errlog), mode="legacy") as client:
            await client.list_tools()
            return _sample(started, before)


async def side_by_side(runs: int) -> dict[str, list[Sample]]:
    """Measure the floor (each packaged skill), pool, library and process rows, interleaved.

    After the pool row the pool refills (one whole sandbox start) before the next row: the
    rows without a pool would otherwise share the CPU, and the start slots, with that refill.
    """
    image, argvs = await anyio.to_thread.run_sync(example_image)
    samples: dict[str, list[Sample]] = {f"floor {name}": [] for name in argvs}
    samples |= {"pool": [], "library": [], "process": []}
    async with WarmPool(CONFIG, EXPERT, 1) as pool:
        for argv in argvs.values():  # warm the caches the first of each would pay for
            await floor_once(image, argv)
        await library_once(pool)
        await library_once(None)
        for _ in range(runs):
            for name, argv in argvs.items():
                samples[f"floor {name}"].append(await floor_once(image, argv))
            samples["pool"].append(await library_once(pool))
            await pool.wait_ready()
            samples["library"].append(await library_once(None))
            samples["process"].append(await process_once())
    return samples


async def concurrent(size: int) -> dict[str, object]:
    """Claim `size` runs from one pool of `size` at once; measure them; close; count leftovers."""
    echo_ms: list[float] = []
    run_ids: list[str] = []
    async with WarmPool(CONFIG, EXPERT, size) as pool:
        await pool.wait_ready()
        warm_ids = pool.warm_run_ids
        containers_b = await anyio.to_thread.run_sync(_containers_memory, warm_ids)
        listed, go = anyio.Event(), anyio.Event()
        ready: list[Run] = []
        started = time.monotonic()
        ready_s = float("nan")

        async def member() -> None:
            async with open_run(CONFIG, EXPERT, pool=pool) as run:
                run_ids.append(run.run_id)
                await run.list_tools()
                ready.append(run)
                if len(ready) == size:
                    listed.set()
                await go.wait()
                for _ in range(ECHO_CALLS):
                    began = time.perf_counter()
                    await run.call_tool("echo", {"message": "service"})
                    echo_ms.append((time.perf_counter() - began) * 1000)

        async with anyio.create_task_group() as group:
            for _ in range(size):
                group.start_soon(member)
            await listed.wait()
            ready_s = time.monotonic() - started
            process_b = sum(_rss(pid) for pid in (os.getpid(), *_children(os.getpid())))
            go.set()
    # Every run of this state directory: the claimed ones, the first warm ones, the refills.
    every = [run.run_id for run in state.list_runs()]
    left = await anyio.to_thread.run_sync(leftovers_of, every)
    return {
        "size": size,
        "ready_s": ready_s,
        "memory_mb": (containers_b + process_b) / size / 1e6,
        "containers_mb": containers_b / size / 1e6,
        "process_mb": process_b / size / 1e6,
        "echo_p50": statistics.median(echo_ms),
        "echo_p99": percentile(echo_ms, 0.99),
        "left": left,
    }


def _containers_memory(run_ids: tuple[str, ...]) -> int:
    """Sum the memory (cgroup, without inactive file cache) of every container of `run_ids`."""
    api = docker.from_env().api
    total = 0
    for run_id in run_ids:
        for container in api.containers(filters={"label": f"{RUN_LABEL}={run_id}"}):
            total += _container_memory(api, container["Id"])
    return total


def report(samples: dict[str, list[Sample]], fleet: dict[str, object] | None, out: TextIO) -> None:
    """Print the side-by-side table, the goals, the CPU accounting and the concurrent row."""
    if samples:
        _report_starts(samples, out)
        _report_cpu(samples, out)
    if fleet is not None:
        out.write(
            "\n| concurrent runs (one pool, one process) | all listed s | host MB / sandbox "
            "(containers + process) | echo p50 ms | echo p99 ms | objects left |\n"
            "|---|---|---|---|---|---|\n"
            f"| {fleet['size']} | {fleet['ready_s']:.1f} | {fleet['memory_mb']:.0f} "
            f"({fleet['containers_mb']:.0f} + {fleet['process_mb']:.0f}; goal <= "
            f"{MEMORY_GOAL_MB}) | {fleet['echo_p50']:.1f} | {fleet['echo_p99']:.1f} "
            f"| {fleet['left']} |\n"
        )


def _slowest_floor(samples: dict[str, list[Sample]]) -> tuple[str, float]:
    floors = {
        name: statistics.median(s for s, _ in v)
        for name, v in samples.items()
        if name.startswith("floor")
    }
    slowest = max(floors, key=floors.__getitem__)
    return slowest, floors[slowest]


def _report_starts(samples: dict[str, list[Sample]], out: TextIO) -> None:
    slowest, floor = _slowest_floor(samples)
    rows = [
        (f"floor: docker run -i of the slowest skill ({slowest.split()[1]})", slowest, None),
        ("pool: open_run(pool=...) to first tools/list", "pool", POOL_GOAL),
        ("library: open_run(...) to first tools/list", "library", PROCESS_GOAL),
        ("process: `run` spawned to first tools/list", "process", PROCESS_GOAL),
    ]
    out.write(f"| {'measure':<58} | runs | median s | min s | x floor | goal |\n")
    out.write(f"|{'-' * 60}|------|----------|-------|---------|------|\n")
    for label, name, goal in rows:
        values = [seconds for seconds, _ in samples[name]]
        median = statistics.median(values)
        verdict = (
            "" if goal is None else f"<= {goal}x " + ("met" if median <= goal * floor else "MISSED")
        )
        out.write(
            f"| {label:<58} | {len(values):>4} | {median:>8.3f} | {min(values):>5.3f} "
            f"| {median / floor:>7.2f} | {verdict} |\n"
        )
    others = ", ".join(
        f"{name.split()[1]} {statistics.median(s for s, _ in v):.3f} s"
        for name, v in samples.items()
        if name.startswith("floor")
    )
    out.write(f"\nfloors by skill (median): {others}\n")


def _report_cpu(samples: dict[str, list[Sample]], out: TextIO) -> None:
    """CPU-seconds per group during each row's start (medians), against the 1.5x budget.

    The budget is what the machine's cores can give in 1.5x the floor's wall time: a
    start whose own CPU (machine minus "other") exceeds it cannot meet 1.5x by any ordering.
    """
    _, floor = _slowest_floor(samples)
    cores = os.cpu_count() or 1
    budget = cores * PROCESS_GOAL * floor
    groups = (*_cpu.GROUPS, "machine")
    out.write(
        f"\nCPU-seconds during each start (median of each column; budget: {cores} cores x "
        f"{PROCESS_GOAL} x floor {floor:.3f} s = {budget:.2f} CPU-s)\n\n"
        f"| row | wall s | {' | '.join(groups)} | ours (machine - other) | ours / budget |\n"
        f"|---|---|{'---|' * len(groups)}---|---|\n"
    )
    for name, values in samples.items():
        wall = statistics.median(seconds for seconds, _ in values)
        cells = [statistics.median(spent[group] for _, spent in values) for group in groups]
        ours = statistics.median(spent["machine"] - spent["other"] for _, spent in values)
        out.write(
            f"| {name} | {wall:.3f} | {' | '.join(f'{cell:.2f}' for cell in cells)} "
            f"| {ours:.2f} | {ours / budget:.2f} |\n"
        )


def main(argv: list[str] | None = None) -> None:
    """Measure and print the service table, with the machine's load before and after."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="samples of each row (0: skip)")
    parser.add_argument("--concurrent", type=int, default=10, help="runs at once (0: skip)")
    args = parser.parse_args(argv)
    kept = os.environ.get(state.STATE_ENV)
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        os.environ[state.STATE_ENV] = tmp  # the runs' folders go with the temporary directory
        try:
            before = os.getloadavg()
            samples = anyio.run(side_by_side, args.runs) if args.runs > 0 else {}
            fleet = anyio.run(concurrent, args.concurrent) if args.concurrent > 0 else None
            after = os.getloadavg()
        finally:  # `make bench` runs the next benchmark in this process
            if kept is None:
                os.environ.pop(state.STATE_ENV, None)
            else:
                os.environ[state.STATE_ENV] = kept
    report(samples, fleet, sys.stdout)
    print(
        f"\nload average (1, 5, 15 min) before: {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}; "
        f"after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}; {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
