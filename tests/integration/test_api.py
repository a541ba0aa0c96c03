"""The public API on a real engine: its docstring example runs, and runs share one process.

Many runs opened concurrently in one process must keep separate audit trails (tools.jsonl),
logs (skills.log) and state (meta.json), and the library must leave the process's signal and
logging handlers alone (the CLI installs its own; a program embedding the library decides).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import pytest
from skills_support import (
    CLI_TIMEOUT_S,
    EXAMPLE_CONFIG,
    ROOT,
    ensure_image,
    expert_toml,
    require_engine,
    stdlib_skill,
    unique,
    write_expert,
)

from perstack_sandbox import state
from perstack_sandbox.run import open_run

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.docker, pytest.mark.anyio]
MANY_RUNS_DEADLINE_S = 900  # 20 sandboxes start and stop on 2 busy cores
HANDLER_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@pytest.fixture(autouse=True)
def _engine() -> None:
    require_engine()


@dataclass(frozen=True)
class Opened:
    """What one of the concurrent runs saw while every run was open."""

    index: int
    expert: str
    run_id: str
    path: Path
    signal_handlers: tuple[object, ...]
    log_handlers: tuple[logging.Handler, ...]


def _experts(tmp_path: Path, count: int) -> list[tuple[Path, str]]:
    """Write `count` Experts; the i-th has one stdlib skill named `s<i>`, with a banner."""
    base = unique("many")
    made = []
    for index in range(count):
        key = f"{base}-{index}"
        toml = expert_toml(key, stdlib_skill(f"s{index}", "--banner", "--only", "echo"))
        made.append((write_expert(tmp_path / key, toml), key))
    return made


async def _open_all(experts: list[tuple[Path, str]]) -> list[Opened]:
    """Open every run at once; run i calls echo i+1 times, then all close together."""
    all_open, seen = anyio.Event(), []

    async def one(index: int, config: Path, key: str) -> None:
        async with open_run(config, key, secrets={}) as run:
            for _ in range(index + 1):
                result = await run.call_tool("echo", {"text": f"run {index}"})
                assert not result.is_error
            handlers = tuple(signal.getsignal(sig) for sig in HANDLER_SIGNALS)
            roots = tuple(logging.getLogger().handlers)
            seen.append(Opened(index, key, run.run_id, run.path, handlers, roots))
            if len(seen) == len(experts):
                all_open.set()
            await all_open.wait()

    async with anyio.create_task_group() as group:
        for index, (config, key) in enumerate(experts):
            group.start_soon(one, index, config, key)
    return sorted(seen, key=lambda opened: opened.index)


@pytest.mark.usefixtures("state_home")
@pytest.mark.parametrize("count", [2, 20])
async def test_concurrent_runs_in_one_process_keep_separate_trails_logs_and_state(
    tmp_path: Path, count: int
) -> None:
    """N runs open at once: each trail, log and meta.json holds its own run and nobody else's.

    Fails when: runs report through shared process-wide handlers (as the launch did before
    this API: every run's tools.jsonl got every run's calls).
    """
    experts = _experts(tmp_path, count)
    ensure_image(*experts[0])  # every Expert here has the same (empty) package set
    signals_before = tuple(signal.getsignal(sig) for sig in HANDLER_SIGNALS)
    roots_before = tuple(logging.getLogger().handlers)
    with anyio.fail_after(MANY_RUNS_DEADLINE_S):
        opened = await _open_all(experts)
    assert len({run.run_id for run in opened}) == len({run.path for run in opened}) == count
    for run in opened:
        assert run.signal_handlers == signals_before  # the library installs no signal handler
        assert run.log_handlers == roots_before  # nor a logging handler
        trail = (run.path / state.TOOLS_FILE).read_text().splitlines()
        calls = [(call["skill"], call["tool"]) for call in map(json.loads, trail)]
        assert calls == [(f"s{run.index}", "echo")] * (run.index + 1)
        log = (run.path / state.SKILLS_LOG_FILE).read_text()
        assert f"[s{run.index}] stdlib skill ready" in log
        assert set(re.findall(r"\[(s\d+)\]", log)) == {f"s{run.index}"}
        meta = json.loads((run.path / state.META_FILE).read_text())
        assert (meta["run_id"], meta["expert"], meta["status"]) == (
            run.run_id,
            run.expert,
            "finished",
        )


def _docstring_example() -> str:
    """Return the Python example in `open_run`'s docstring."""
    doc = open_run.__doc__ or ""
    match = re.search(r"```python\n(.*?)```", doc, re.DOTALL)
    assert match, "open_run's docstring has no ```python example"
    lines = match.group(1).splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines) + "\n"


def test_the_docstring_example_of_open_run_runs_as_written(tmp_path: Path) -> None:
    """The example in `open_run`'s docstring, run as a script from the repository root."""
    ensure_image(EXAMPLE_CONFIG, "demo")
    script = tmp_path / "example.py"
    script.write_text(_docstring_example(), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
        cwd=ROOT,
        env={**os.environ, state.STATE_ENV: str(tmp_path / "state")},
    )
    assert done.returncode == 0, done.stderr
    run_id, folder, count, text = done.stdout.split(maxsplit=3)
    assert folder == str(tmp_path / "state" / "runs" / run_id)
    assert int(count) > 1
    assert "hello" in text
    assert done.stderr == ""  # the library prints nothing of its own
