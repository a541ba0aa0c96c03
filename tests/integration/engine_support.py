"""Helpers for the engine's integration tests: probes inside a sandbox, objects of a run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from perstack_sandbox.plan import Limits, Mount, SandboxPlan

if TYPE_CHECKING:
    from pathlib import Path

    import docker

    from perstack_sandbox.engine import Sandbox

EXEC_DEADLINE_S = 60  # one probe inside a sandbox on a busy 2-core host
RUN_LABEL = "perstack-sandbox.run"


def make_plan(
    expert_dir: Path, *, limits: Limits | None = None, name: str = "itest"
) -> SandboxPlan:
    """Return a plan with no skills: enough to start a sandbox and probe it."""
    expert_dir.mkdir(parents=True, exist_ok=True)
    return SandboxPlan(
        expert=name,
        config_dir=str(expert_dir),
        skills=(),
        limits=limits or Limits(),
        mounts=(Mount(source=str(expert_dir), target="/expert", read_only=True),),
    )


@dataclass(frozen=True)
class Result:
    """What a process run in a sandbox gave back."""

    code: int | None
    stdout: bytes
    stderr: bytes

    def json(self) -> object:
        """Parse stdout as JSON."""
        return json.loads(self.stdout)


async def drain(stream: anyio.abc.ByteReceiveStream) -> bytes:
    """Read a stream to its end."""
    chunks = []
    try:
        while True:
            chunks.append(await stream.receive())
    except anyio.EndOfStream:
        pass
    return b"".join(chunks)


async def run_in(  # noqa: PLR0913 - a probe's whole description
    sandbox: Sandbox,
    argv: list[str],
    *,
    stdin: bytes = b"",
    skill: int = 0,
    env: dict[str, str] | None = None,
    workdir: str = "/",
) -> Result:
    """Run `argv` as skill uid `skill` with `stdin`, and collect its output and exit code."""
    full_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **(env or {})}
    user = sandbox.skill_uid(skill)
    with anyio.fail_after(EXEC_DEADLINE_S):
        async with sandbox.exec_stdio(argv, env=full_env, user=user, workdir=workdir) as process:
            results: dict[str, bytes] = {}

            async def collect(name: str, stream: anyio.abc.ByteReceiveStream) -> None:
                results[name] = await drain(stream)

            async with anyio.create_task_group() as group:
                group.start_soon(collect, "out", process.stdout)
                group.start_soon(collect, "err", process.stderr)
                if stdin:
                    await process.stdin.send(stdin)
                await process.stdin.aclose()
            code = await process.wait()
    return Result(code=code, stdout=results["out"], stderr=results["err"])


def objects_of_run(api: docker.APIClient, run_id: str) -> list[str]:
    """Name every container and network labelled with `run_id` (whatever its state)."""
    flt = {"label": f"{RUN_LABEL}={run_id}"}
    names = [f"container {c['Names'][0]}" for c in api.containers(all=True, filters=flt)]
    return names + [f"network {n['Name']}" for n in api.networks(filters=flt)]
