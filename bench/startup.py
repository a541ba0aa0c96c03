"""Sandbox start-up: cold (per-expert build included) and warm (cached image) vs the floor.

"Ready" means `open_sandbox` has yielded: internal network, proxy (answering /healthz) and the
hardened sandbox container all up. The floor is `docker run --rm IMAGE true` of the same image:
the cost of one bare container start and removal on this engine.

Goal (issue 4): warm start at most 1.5 s and at most 3x the floor.

gVisor (issue 9): the same warm start with `isolation="gvisor"` (one sandbox container per
stdio skill there), and the first tools/list of the bundled example Expert (from `open_expert`
with a cached image to the answer), each as a ratio to runc, measured interleaved in one run.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import anyio
import docker

from perstack_sandbox import engine, state
from perstack_sandbox.engine import open_sandbox
from perstack_sandbox.isolation import ISOLATIONS, check_isolation
from perstack_sandbox.launch import LaunchOptions, open_expert
from perstack_sandbox.plan import (
    WORKSPACE_DIR,
    PackageSpec,
    SandboxPlan,
    SkillLaunch,
    container_argv,
)

WARM_GOAL_S = 1.5
FLOOR_RATIO_GOAL = 3.0
EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "perstack.toml"
EXAMPLE_EXPERT = "demo"


def example_plan(expert_dir: Path, salt: str = "") -> SandboxPlan:
    """Return a plan with the two example packages; a salt makes its image tag new (cold)."""
    packages = (
        PackageSpec(
            manager="npm",
            name="@modelcontextprotocol/server-everything",
            version_spec="",
            slug=f"everything{salt}",
        ),
        PackageSpec(manager="pypi", name="mcp-server-time", version_spec="", slug=f"time{salt}"),
    )
    return SandboxPlan(
        expert="bench",
        config_dir=str(expert_dir),
        skills=tuple(
            SkillLaunch(
                name=p.slug,
                kind=kind,
                argv=container_argv(kind, p, ()),
                package=p,
                env_names=(),
                workdir=WORKSPACE_DIR,
            )
            for kind, p in zip(("npx", "uvx"), packages, strict=True)
        ),
    )


async def start_once(plan: SandboxPlan, isolation: str = "runc") -> tuple[float, float, str]:
    """Time image lookup/build + start to ready, then teardown; return both and the image."""
    started = time.perf_counter()
    image = await anyio.to_thread.run_sync(
        lambda: engine.ensure_expert_image(plan, progress=lambda _line: None)
    )
    run = state.create_run(plan.expert)
    chosen = check_isolation(isolation)
    async with open_sandbox(plan, image=image, run=run, isolation=chosen):
        ready = time.perf_counter() - started
        stopping = time.perf_counter()
    return ready, time.perf_counter() - stopping, image


async def first_tools_list(isolation: str) -> float:
    """Seconds from `open_expert` of the example Expert (cached image) to its tools/list."""
    options = LaunchOptions(
        config_path=EXAMPLE_CONFIG,
        expert=EXAMPLE_EXPERT,
        progress=lambda _line: None,
        isolation=check_isolation(isolation),
    )
    started = time.perf_counter()
    async with open_expert(options) as gateway:
        await gateway.list_tools()
        return time.perf_counter() - started


def floor_once(image: str) -> float:
    """Time `docker run --rm IMAGE true`."""
    started = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", image, "true"], check=True, capture_output=True)
    return time.perf_counter() - started


def measure(runs: int, *, cold: bool) -> dict[str, list[float]]:
    """Run the floor, warm starts and first tools/list under each isolation, interleaved.

    Returns samples by name: floor, warm-<isolation>, teardown-<isolation>,
    tools-<isolation>, and cold (runc, when asked).
    """
    samples: dict[str, list[float]] = {"floor": [], "cold": []}
    for isolation in ISOLATIONS:
        for name in ("warm", "teardown", "tools"):
            samples[f"{name}-{isolation}"] = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        plan = example_plan(Path(tmp))
        _, _, image = anyio.run(start_once, plan)  # build if needed, and warm the caches
        for isolation in ISOLATIONS:  # warm each runtime's caches and the example's image
            anyio.run(start_once, plan, isolation)
            anyio.run(first_tools_list, isolation)
        for _ in range(runs):
            samples["floor"].append(floor_once(image))
            for isolation in ISOLATIONS:
                ready, teardown, _ = anyio.run(start_once, plan, isolation)
                samples[f"warm-{isolation}"].append(ready)
                samples[f"teardown-{isolation}"].append(teardown)
                samples[f"tools-{isolation}"].append(anyio.run(first_tools_list, isolation))
        if cold:
            cold_plan = example_plan(Path(tmp), salt=f"-{secrets.token_hex(3)}")
            ready, _, cold_image = anyio.run(start_once, cold_plan)
            samples["cold"].append(ready)
            docker.from_env().images.remove(cold_image)
    return samples


def report(samples: dict[str, list[float]]) -> None:
    """Print the side-by-side tables: runc against the floor, then gVisor against runc."""
    floor = statistics.median(samples["floor"])
    rows = [
        ("floor: docker run --rm IMAGE true", samples["floor"]),
        ("warm start to ready (cached image)", samples["warm-runc"]),
        ("teardown (after warm start)", samples["teardown-runc"]),
        ("cold start to ready (per-expert build)", samples["cold"]),
    ]
    print(f"| {'measure (runc)':<40} | runs | median s | min s | x floor |")
    print(f"|{'-' * 42}|------|----------|-------|---------|")
    for label, values in rows:
        if not values:
            continue
        median = statistics.median(values)
        print(
            f"| {label:<40} | {len(values):>4} | {median:>8.3f} | {min(values):>5.3f} "
            f"| {median / floor:>7.2f} |"
        )
    warm = statistics.median(samples["warm-runc"])
    verdict = "met" if warm <= WARM_GOAL_S and warm <= FLOOR_RATIO_GOAL * floor else "MISSED"
    print(
        f"\ngoal: warm <= {WARM_GOAL_S} s and <= {FLOOR_RATIO_GOAL:.0f}x floor: {verdict} "
        f"(warm {warm:.3f} s, {warm / floor:.2f}x)\n"
    )
    print(f"| {'measure':<40} | runs | runc median s | gvisor median s | gvisor / runc |")
    print(f"|{'-' * 42}|------|---------------|-----------------|---------------|")
    for label, name in [
        ("warm start to ready (2 skills)", "warm"),
        ("teardown (after warm start)", "teardown"),
        ("first tools/list, example Expert", "tools"),
    ]:
        runc = statistics.median(samples[f"{name}-runc"])
        gvisor = statistics.median(samples[f"{name}-gvisor"])
        runs = len(samples[f"{name}-gvisor"])
        ratio = gvisor / runc
        print(f"| {label:<40} | {runs:>4} | {runc:>13.3f} | {gvisor:>15.3f} | {ratio:>13.2f} |")


def main(argv: list[str] | None = None) -> None:
    """Measure and print the start-up table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="warm starts and floor runs")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold (build) start")
    args = parser.parse_args(argv)
    report(measure(args.runs, cold=not args.no_cold))


if __name__ == "__main__":
    main()
