"""Our proxy as it ships, for `bench/proxy_vs_squid.py --ours image`.

The proxy image of the current sources (built if missing), started with the hardening and
limits the engine gives it (read-only root, private tmpfs, no capabilities, 1 CPU, 256 MiB),
but on the host's network so that it reaches the same loopback sink as Squid. The image has
Debian's Python and python3-uvloop; audit lines go to the engine's log, as in a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from typing import IO, TYPE_CHECKING, Any

from _procs import DEADLINE, wait_listening

from perstack_sandbox.engine._proxybox import (
    PROXY_MEMORY_BYTES,
    PROXY_NANO_CPUS,
    PROXY_PIDS,
    PROXY_TMPFS,
)
from perstack_sandbox.images._cache import ensure_proxy_image

if TYPE_CHECKING:
    from collections.abc import Iterator


def _docker_run(name: str, image: str, listen: str) -> list[str]:
    tmpfs = f"/tmp:{PROXY_TMPFS}"  # noqa: S108 - the container's own private tmpfs
    return [
        "docker", "run", "--rm", "--name", name, "--network", "host",
        "--read-only", "--tmpfs", tmpfs, "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges:true", "--ipc", "private",
        "--memory", str(PROXY_MEMORY_BYTES), "--memory-swap", str(PROXY_MEMORY_BYTES),
        "--cpus", str(PROXY_NANO_CPUS / 1e9), "--pids-limit", str(PROXY_PIDS),
        "-e", "PERSTACK_PROXY_POLICY", "-e", f"PERSTACK_PROXY_LISTEN={listen}",
        image,
    ]  # fmt: skip


@contextlib.contextmanager
def ours_in_image(policy: dict[str, Any], host: str, port: int, audit: IO[bytes]) -> Iterator[int]:
    """Run the proxy's container listening on ``host:port``; yield the proxy's host pid."""
    name = f"bench-proxy-{os.getpid()}-{port}"
    env = {**os.environ, "PERSTACK_PROXY_POLICY": json.dumps(policy)}
    process = subprocess.Popen(
        _docker_run(name, ensure_proxy_image(), f"{host}:{port}"),
        env=env,
        stdout=audit,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(host, port, process, "our proxy's container")
        inspect = ["docker", "inspect", "--format", "{{.State.Pid}}", name]
        yield int(subprocess.run(inspect, capture_output=True, check=True, text=True).stdout)
    finally:
        subprocess.run(["docker", "stop", "--time", "5", name], capture_output=True, check=False)
        process.wait(DEADLINE)
