"""Scale: N concurrent sandboxes of the example Expert, each a `run` behind the MCP SDK's client.

For N = 10, 20, 40 (by default), N `perstack-sandbox run demo` processes are started at once,
each driven by the MCP Python SDK's stdio client, as an agent runtime would drive them. Measured
side by side:
- ready: time from the first spawn until every client has listed its tools;
- host MiB per sandbox: the run process and its reaper (RSS) plus the sandbox's two containers
  (cgroup memory minus inactive file cache, as `docker stats` counts it), summed, divided by N;
- echo latency: every client calls the everything server's `echo` ECHO_CALLS times, all at once;
- leftovers: containers and networks of those runs still on the engine LEFTOVER_DEADLINE_S after
  the clients began to close (the SDK closes stdin, waits 2 s, SIGTERMs, waits 2 s, SIGKILLs),
  with no `gc`; and how long it took until none was left.

`tests/integration/test_engine_scale.py` runs the same fleet for its acceptance checks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import docker
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perstack_sandbox import engine, state  # noqa: E402 - after the path tweak
from perstack_sandbox.config import load_config  # noqa: E402
from perstack_sandbox.plan import plan  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import TextIO

CONFIG = ROOT / "examples" / "perstack.toml"
EXPERT = "demo"
SIZES = (10, 20, 40)
ECHO_CALLS = 5
START_DEADLINE_S = 900.0  # 40 sandboxes, 120 skills, on 2 shared cores
LEFTOVER_DEADLINE_S = 30.0  # the acceptance bound
RUN_LABEL = "perstack-sandbox.run"
CGROUP_ROOTS = (
    "/sys/fs/cgroup/memory/docker/{id}",  # cgroup v1, cgroupfs driver
    "/sys/fs/cgroup/system.slice/docker-{id}.scope",  # cgroup v2, systemd driver
    "/sys/fs/cgroup/docker/{id}",  # cgroup v2, cgroupfs driver
)


@dataclass
class Fleet:
    """What one fleet of N sandboxes did."""

    size: int
    listed: int = 0
    ready_s: float = float("nan")
    memory_mib: float = float("nan")  # per sandbox
    echo_ms: list[float] = field(default_factory=list)
    leftovers: int = -1
    clean_after_s: float = float("nan")  # from the last client's close to zero objects
    failures: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)


def ensure_image() -> None:
    """Build the example's image once, before anything is timed."""
    config, _ = load_config(CONFIG)
    engine.ensure_expert_image(plan(config, EXPERT), progress=lambda _line: None)


class Countdown:
    """An event set once `count` members have passed (or failed) a phase."""

    def __init__(self, count: int) -> None:
        """Wait for `count` ticks."""
        self.left = count
        self.done = anyio.Event()
        if count <= 0:
            self.done.set()

    def tick(self) -> None:
        """One member is through."""
        self.left -= 1
        if self.left <= 0:
            self.done.set()


async def run_fleet(size: int, state_dir: Path, errlog: TextIO) -> Fleet:
    """Start `size` sandboxes at once, measure them, close them, and count what is left."""
    fleet = Fleet(size)
    env = {**os.environ, state.STATE_ENV: str(state_dir)}
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "perstack_sandbox", "run", EXPERT, "-c", str(CONFIG)],
        env=env,
        cwd=str(ROOT),
    )
    listing, echoing = Countdown(size), Countdown(size)
    echo_go, close = anyio.Event(), anyio.Event()
    started = time.monotonic()

    async def member(index: int) -> None:
        owed = [listing, echoing]  # the phases this member has not passed yet
        try:
            async with Client(stdio_client(server, errlog=errlog), mode="legacy") as client:
                tools = (await client.list_tools()).tools
                if not any(tool.name == "echo" for tool in tools):
                    fleet.failures.append(f"#{index}: no echo tool in {len(tools)} tools")
                    return
                fleet.listed += 1
                owed.pop(0).tick()
                await echo_go.wait()
                for _ in range(ECHO_CALLS):
                    began = time.perf_counter()
                    await client.call_tool("echo", {"message": f"scale {index}"})
                    fleet.echo_ms.append((time.perf_counter() - began) * 1000)
                owed.pop(0).tick()
                await close.wait()
        except Exception as exc:  # noqa: BLE001 - one member's failure is a measured result
            fleet.failures.append(f"#{index}: {type(exc).__name__}: {exc}")
        finally:
            for phase in owed:
                phase.tick()

    async with anyio.create_task_group() as group:
        for index in range(size):
            group.start_soon(member, index)
        with anyio.move_on_after(START_DEADLINE_S):
            await listing.done.wait()
        if fleet.listed == size:
            fleet.ready_s = time.monotonic() - started
            fleet.memory_mib = await anyio.to_thread.run_sync(host_memory_mib, state_dir) / size
        echo_go.set()
        with anyio.move_on_after(START_DEADLINE_S):
            await echoing.done.wait()
        closed = time.monotonic()  # the clients start closing now
        close.set()
    fleet.run_ids = [run.run_id for run in _runs(state_dir)]
    fleet.leftovers, fleet.clean_after_s = await anyio.to_thread.run_sync(
        wait_for_no_leftovers, fleet.run_ids, closed
    )
    return fleet


def _runs(state_dir: Path) -> Iterator[state.RunState]:
    runs = state_dir / "runs"
    for path in sorted(runs.iterdir()) if runs.is_dir() else []:
        yield state.RunState(run_id=path.name, path=path)


def leftovers_of(run_ids: list[str]) -> int:
    """Count the containers and networks labelled with any of `run_ids`."""
    api = docker.from_env().api
    wanted = set(run_ids)
    containers = api.containers(all=True, filters={"label": RUN_LABEL})
    networks = api.networks(filters={"label": RUN_LABEL})
    labels = [(o.get("Labels") or {}).get(RUN_LABEL) for o in [*containers, *networks]]
    return sum(1 for run_id in labels if run_id in wanted)


def wait_for_no_leftovers(run_ids: list[str], since: float) -> tuple[int, float]:
    """Poll until no object of `run_ids` is left (or the deadline); return the count and time."""
    while True:
        left = leftovers_of(run_ids)
        elapsed = time.monotonic() - since
        if left == 0 or elapsed >= LEFTOVER_DEADLINE_S:
            return left, elapsed if left == 0 else float("nan")
        time.sleep(0.25)


def host_memory_mib(state_dir: Path) -> float:
    """Sum the memory of every run of `state_dir`: processes (RSS) and containers (cgroup)."""
    api = docker.from_env().api
    total = 0
    for run in _runs(state_dir):
        pid = int(str(run.read_meta().get("pid", "0")))
        total += sum(_rss(p) for p in (pid, *_children(pid)))
        for container in api.containers(filters={"label": f"{RUN_LABEL}={run.run_id}"}):
            total += _container_memory(api, container["Id"])
    return total / 1024**2


def _rss(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return 0
    line = next((row for row in status.splitlines() if row.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) * 1024


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _container_memory(api: docker.APIClient, container_id: str) -> int:
    for pattern in CGROUP_ROOTS:
        root = Path(pattern.format(id=container_id))
        usage_file = root / "memory.usage_in_bytes"
        if not usage_file.exists():
            usage_file = root / "memory.current"
        try:
            usage = int(usage_file.read_text(encoding="ascii"))
            stat = dict(line.split() for line in (root / "memory.stat").read_text().splitlines())
        except OSError:
            continue
        inactive = stat.get("total_inactive_file", stat.get("inactive_file", "0"))
        return usage - int(inactive)
    memory = api.stats(container_id, stream=False)["memory_stats"]  # slower, but anywhere
    stats = memory.get("stats", {})
    return int(memory.get("usage", 0)) - int(stats.get("total_inactive_file", 0))


def percentile(samples: list[float], q: float) -> float:
    """Return the q-quantile (0..1) of `samples` (nan when empty)."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(size: int, errlog: TextIO) -> Fleet:
    """Run one fleet in a fresh state directory."""
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        return anyio.run(run_fleet, size, Path(tmp), errlog)


def report(fleets: list[Fleet]) -> None:
    """Print the side-by-side table, with ratios to the smallest fleet."""
    base = fleets[0]
    base_echo = statistics.median(base.echo_ms) if base.echo_ms else float("nan")
    print(
        "| sandboxes | listed tools | all listed (s) | s per sandbox | host MiB / sandbox "
        "| echo p50 ms (x smallest) | echo p95 ms | left 30 s after close |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for fleet in fleets:
        p50 = statistics.median(fleet.echo_ms) if fleet.echo_ms else float("nan")
        p95 = percentile(fleet.echo_ms, 0.95)
        left = str(fleet.leftovers)
        if fleet.leftovers == 0:
            left += f" (none after {fleet.clean_after_s:.1f} s)"
        print(
            f"| {fleet.size} | {fleet.listed}/{fleet.size} | {fleet.ready_s:.1f} "
            f"| {fleet.ready_s / fleet.size:.2f} | {fleet.memory_mib:.0f} "
            f"| {p50:.1f} ({p50 / base_echo:.1f}x) | {p95:.1f} | {left} |"
        )
    for fleet in fleets:
        for failure in fleet.failures[:5]:
            print(f"N={fleet.size} failure: {failure}")


def main(argv: list[str] | None = None) -> None:
    """Measure and print the scale table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--log", type=Path, help="where the run processes' stderr goes")
    args = parser.parse_args(argv)
    ensure_image()
    with args.log.open("a") if args.log else open(os.devnull, "w") as errlog:  # noqa: PTH123
        report([measure(size, errlog) for size in args.sizes])


if __name__ == "__main__":
    main()
