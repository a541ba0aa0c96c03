"""A process and all its descendants: CPU time and resident memory, for the benchmarks.

Both proxies are measured over every process they run (Squid's helpers, such as its
certificate generator, count as Squid's) and every thread of each.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

# Every wait on a process is bounded by this.
DEADLINE = 60.0


def free_port(host: str) -> int:
    """Return a TCP port on ``host`` that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_listening(host: str, port: int, process: subprocess.Popen[bytes], what: str) -> None:
    """Wait until ``process`` accepts connections on ``port``.

    Raises:
        RuntimeError: it exited first, or did not listen within DEADLINE.

    """
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port} within {DEADLINE} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate ``process`` (kill it if it lingers) and reap it."""
    process.terminate()
    try:
        process.wait(DEADLINE / 4)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(DEADLINE / 4)


@contextlib.contextmanager
def squid_process(squid: str, conf: Path, host: str, port: int, what: str) -> Iterator[int]:
    """Run ``squid`` in the foreground with ``conf`` until it listens on ``port``; yield its pid."""
    process = subprocess.Popen(
        [squid, "-N", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(host, port, process, what)
        yield process.pid
    finally:
        stop(process)


def tree(pid: int) -> list[int]:
    """Return ``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time so far of every thread of ``pid`` and its descendants.

    From /proc/PID/task/TID/schedstat, in nanoseconds: /proc/PID/stat counts clock ticks,
    too coarse for a few hundred tunnels.
    """
    total = 0
    for process in tree(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{process}/task").iterdir():
                with contextlib.suppress(OSError):
                    total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, in KiB."""
    total = 0
    for process in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total
