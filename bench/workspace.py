"""The workspace layer's cost: start-up with and without it, file I/O through it and a bind.

Start: `open_sandbox` to ready and its teardown, without a workspace and with a 0755 folder
owned by uid 1000 (the layer's container, its volume and its FUSE mount are added), interleaved.
I/O: the same Python snippet, run as a skill uid in the sandbox image, times itself: sequential
write (1 MiB writes, then fsync) and read-back of one file, and the creation of many small files.
"Through the layer" runs in a sandbox with the workspace; "plain bind" in a bare container of the
same image with the same folder (made 0777 for it) bound at /workspace.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import docker
from startup import example_plan

from perstack_sandbox import engine, state
from perstack_sandbox.engine import open_sandbox

if TYPE_CHECKING:
    from perstack_sandbox.plan import SandboxPlan

OWNER = 1000
SKILL_UID = 10001
IO_SNIPPET = r"""
import json, os, sys, time
mib, files = int(sys.argv[1]), int(sys.argv[2])
block = os.urandom(1 << 20)
path = "/workspace/bench.bin"
started = time.perf_counter()
with open(path, "wb") as out:
    for _ in range(mib):
        out.write(block)
    out.flush()
    os.fsync(out.fileno())
written = time.perf_counter() - started
started = time.perf_counter()
with open(path, "rb") as src:
    while src.read(1 << 20):
        pass
read = time.perf_counter() - started
os.remove(path)
os.mkdir("/workspace/many")
small = os.urandom(4096)
started = time.perf_counter()
for index in range(files):
    with open(f"/workspace/many/{index}", "wb") as out:
        out.write(small)
created = time.perf_counter() - started
for index in range(files):
    os.remove(f"/workspace/many/{index}")
os.rmdir("/workspace/many")
print(json.dumps({"write": mib / written, "read": mib / read, "create": files / created}))
"""


def owned_folder(root: Path, name: str, mode: int) -> Path:
    """Make a folder owned by OWNER with `mode`."""
    folder = root / name
    folder.mkdir()
    os.chown(folder, OWNER, OWNER)
    folder.chmod(mode)
    return folder


async def start_once(plan: SandboxPlan, image: str, workspace: Path | None) -> tuple[float, float]:
    """Time one start to ready and its teardown."""
    started = time.perf_counter()
    async with open_sandbox(
        plan, image=image, run=state.create_run(plan.expert), workspace=workspace
    ):
        ready = time.perf_counter() - started
        stopping = time.perf_counter()
    return ready, time.perf_counter() - stopping


async def io_through_layer(
    plan: SandboxPlan, image: str, folder: Path, argv: list[str]
) -> dict[str, float]:
    """Run the I/O snippet as a skill in a sandbox whose workspace is `folder`."""
    async with open_sandbox(
        plan, image=image, run=state.create_run(plan.expert), workspace=folder
    ) as sandbox:
        env = {"PATH": "/usr/bin:/bin"}
        async with sandbox.exec_stdio(argv, env=env, user=SKILL_UID, workdir="/workspace") as proc:
            out = b""
            while chunk := await _receive(proc.stdout):
                out += chunk
            await proc.wait()
    return json.loads(out)


async def _receive(stream: anyio.abc.ByteReceiveStream) -> bytes:
    try:
        return await stream.receive()
    except anyio.EndOfStream:
        return b""


def io_plain_bind(image: str, folder: Path, argv: list[str]) -> dict[str, float]:
    """Run the I/O snippet as the same uid in a bare container with `folder` bound."""
    out = docker.from_env().containers.run(
        image,
        argv,
        user=str(SKILL_UID),
        volumes={str(folder): {"bind": "/workspace", "mode": "rw"}},
        network_mode="none",
        remove=True,
    )
    return json.loads(out)


def measure(runs: int, mib: int, files: int) -> dict[str, list[float]]:
    """Interleave starts with and without a workspace, and I/O through the layer and a bind."""
    samples: dict[str, list[float]] = {}
    argv = ["python3", "-c", IO_SNIPPET, str(mib), str(files)]
    with tempfile.TemporaryDirectory(prefix="bench-workspace-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        (root / "expert").mkdir()
        plan = example_plan(root / "expert")
        image = engine.ensure_expert_image(plan, progress=lambda _line: None)
        folder = owned_folder(root, "user", 0o755)
        bound = owned_folder(root, "bound", 0o777)
        anyio.run(start_once, plan, image, folder)  # warm the caches, build the layer's image
        for _ in range(runs):
            for key, workspace in (("plain", None), ("workspace", folder)):
                ready, teardown = anyio.run(start_once, plan, image, workspace)
                samples.setdefault(f"ready {key}", []).append(ready)
                samples.setdefault(f"teardown {key}", []).append(teardown)
            layer = anyio.run(io_through_layer, plan, image, folder, argv)
            bind = io_plain_bind(image, bound, argv)
            for metric in ("write", "read", "create"):
                samples.setdefault(f"{metric} layer", []).append(layer[metric])
                samples.setdefault(f"{metric} bind", []).append(bind[metric])
        shutil.rmtree(root / "expert", ignore_errors=True)
    return samples


def report(samples: dict[str, list[float]], mib: int, files: int) -> None:
    """Print both tables: times with their ratio, rates with their ratio."""
    med = {key: statistics.median(values) for key, values in samples.items()}
    runs = len(samples["ready plain"])
    print("| measure | runs | without workspace s | with workspace s | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for what in ("ready", "teardown"):
        plain, layer = med[f"{what} plain"], med[f"{what} workspace"]
        label = "warm start to ready" if what == "ready" else "teardown"
        print(f"| {label} | {runs} | {plain:.3f} | {layer:.3f} | {layer / plain:.2f} |")
    print()
    print("| I/O as a skill uid | plain bind | through the layer | layer/bind |")
    print("| --- | --- | --- | --- |")
    rows = (
        ("write", f"sequential write {mib} MiB (MiB/s)"),
        ("read", f"read back {mib} MiB (MiB/s)"),
        ("create", f"create {files} files of 4 KiB (files/s)"),
    )
    for metric, label in rows:
        bind, layer = med[f"{metric} bind"], med[f"{metric} layer"]
        print(f"| {label} | {bind:.0f} | {layer:.0f} | {layer / bind:.2f} |")


def main(argv: list[str] | None = None) -> None:
    """Measure and print the workspace layer's tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="starts of each kind and I/O rounds")
    parser.add_argument("--mib", type=int, default=256, help="size of the sequential file")
    parser.add_argument("--files", type=int, default=1000, help="small files to create")
    args = parser.parse_args(argv)
    report(measure(args.runs, args.mib, args.files), args.mib, args.files)


if __name__ == "__main__":
    main()
