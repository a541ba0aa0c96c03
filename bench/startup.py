"""Sandbox start-up: cold (per-expert build included) and warm (cached image) vs the floor.

"Ready" means `open_sandbox` has yielded: internal network, proxy (answering /healthz) and the
hardened sandbox container all up. The floor is `docker run --rm IMAGE true` of the same image:
the cost of one bare container start and removal on this engine.

Goal (issue 4): warm start at most 1.5 s and at most 3x the floor.
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
from perstack_sandbox.plan import (
    WORKSPACE_DIR,
    PackageSpec,
    SandboxPlan,
    SkillLaunch,
    container_argv,
)

WARM_GOAL_S = 1.5
FLOOR_RATIO_GOAL = 3.0


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


async def start_once(plan: SandboxPlan) -> tuple[float, float, str]:
    """Time image lookup/build + start to ready, then teardown; return both and the image."""
    started = time.perf_counter()
    image = await anyio.to_thread.run_sync(
        lambda: engine.ensure_expert_image(plan, progress=lambda _line: None)
    )
    run = state.create_run(plan.expert)
    async with open_sandbox(plan, image=image, run=run):
        ready = time.perf_counter() - started
        stopping = time.perf_counter()
    return ready, time.perf_counter() - stopping, image


def floor_once(image: str) -> float:
    """Time `docker run --rm IMAGE true`."""
    started = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", image, "true"], check=True, capture_output=True)
    return time.perf_counter() - started


def measure(runs: int, *, cold: bool) -> dict[str, list[float]]:
    """Run the floor, warm and (optionally) cold starts, interleaved; return the samples."""
    samples: dict[str, list[float]] = {"floor": [], "warm": [], "teardown": [], "cold": []}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        plan = example_plan(Path(tmp))
        _, _, image = anyio.run(start_once, plan)  # build if needed, and warm the caches
        for _ in range(runs):
            samples["floor"].append(floor_once(image))
            ready, teardown, _ = anyio.run(start_once, plan)
            samples["warm"].append(ready)
            samples["teardown"].append(teardown)
        if cold:
            cold_plan = example_plan(Path(tmp), salt=f"-{secrets.token_hex(3)}")
            ready, _, cold_image = anyio.run(start_once, cold_plan)
            samples["cold"].append(ready)
            docker.from_env().images.remove(cold_image)
    return samples


def report(samples: dict[str, list[float]]) -> None:
    """Print the side-by-side table with ratios to the floor and the goals."""
    floor = statistics.median(samples["floor"])
    rows = [
        ("floor: docker run --rm IMAGE true", samples["floor"]),
        ("warm start to ready (cached image)", samples["warm"]),
        ("teardown (after warm start)", samples["teardown"]),
        ("cold start to ready (per-expert build)", samples["cold"]),
    ]
    print(f"| {'measure':<40} | runs | median s | min s | x floor |")
    print(f"|{'-' * 42}|------|----------|-------|---------|")
    for label, values in rows:
        if not values:
            continue
        median = statistics.median(values)
        print(
            f"| {label:<40} | {len(values):>4} | {median:>8.3f} | {min(values):>5.3f} "
            f"| {median / floor:>7.2f} |"
        )
    warm = statistics.median(samples["warm"])
    verdict = "met" if warm <= WARM_GOAL_S and warm <= FLOOR_RATIO_GOAL * floor else "MISSED"
    print(
        f"\ngoal: warm <= {WARM_GOAL_S} s and <= {FLOOR_RATIO_GOAL:.0f}x floor: {verdict} "
        f"(warm {warm:.3f} s, {warm / floor:.2f}x)"
    )


def main(argv: list[str] | None = None) -> None:
    """Measure and print the start-up table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="warm starts and floor runs")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold (build) start")
    args = parser.parse_args(argv)
    report(measure(args.runs, cold=not args.no_cold))


if __name__ == "__main__":
    main()
