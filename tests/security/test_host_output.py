"""Output on the host: what a skill writes must not drive the user's terminal or forge logs."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import anyio
import pytest
from support import EXPERT, HERE, registry_host, write_expert

if TYPE_CHECKING:
    from pathlib import Path

    from support import Hostile

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

ROOT = HERE.parents[1]
CLI_DEADLINE_S = 300
# Written to the skill server's own stderr (same uid: /proc/<ppid>/fd/2), then the server is
# killed, so the orchestrator reports its death with its last stderr lines.
ESCAPES = "\x1b]0;PWNED\x07\x1b[2J\x1b]52;c;cGF5bG9hZA==\x07 forged\u202eline"
DYING_WORDS = (
    "import os\n"
    "with open(f'/proc/{os.getppid()}/fd/2', 'w') as err:\n"
    f"    err.write({ESCAPES!r} + '\\n')\n"
    "os.kill(os.getppid(), 9)\n"
)


@pytest.mark.usefixtures("skill_secrets")
async def test_a_dying_skills_escape_sequences_reach_the_terminal_defused(
    tmp_path: Path,
) -> None:
    """`call` reports the skill's death with its stderr, escape sequences shown, not sent.

    Fails when: error messages or warnings print a skill's stderr raw (checked by hand: without
    `printable` in `cli.error_lines` and the warning formatter, ESC and BEL reach stderr and
    set the terminal's title). The Expert here has the hostile skill alone (`call` has no
    --prefix-tools); its secret comes from the suite's environment.
    """
    config, _ = write_expert(tmp_path / "alone", registry_host())
    toml = config.read_text(encoding="utf-8")
    config.write_text(toml[: toml.index(f'[experts."{EXPERT}".skills."decoy"]')])
    arguments = json.dumps({"code": DYING_WORDS})
    argv = [sys.executable, "-m", "perstack_sandbox", "call", EXPERT, "run_python"]
    argv += ["--args", arguments, "-c", str(config)]
    with anyio.fail_after(CLI_DEADLINE_S):
        done = await anyio.run_process(argv, check=False, cwd=ROOT)
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 1, stderr
    assert "exited with code 137" in stderr
    assert "\\x1b]0;PWNED\\x07" in stderr
    assert "\\u202e" in stderr
    assert not [c for c in stderr if c in "\x1b\x07\x9b\u202e"]


async def test_the_skills_log_keeps_a_skills_stderr_defused(hostile: Hostile) -> None:
    """A skill's stderr is logged with control characters escaped, so the log cannot be forged.

    Fails when: stderr lines are logged raw (a `cat` of skills.log would then run the
    sequences, and a written newline could start a line that looks like the orchestrator's).
    """
    pid = (await hostile.whoami("hostile"))["pid"]
    code = (
        f"with open('/proc/{pid}/fd/2', 'w') as err:\n"
        f"    err.write({ESCAPES!r} + ' marker-7c1e\\n')\n"
    )
    await hostile.python(code)
    with anyio.fail_after(10):
        while "marker-7c1e" not in hostile.run.skills_log_path.read_text(encoding="utf-8"):  # noqa: ASYNC110 - a file the logging thread appends to
            await anyio.sleep(0.05)
    log = hostile.run.skills_log_path.read_text(encoding="utf-8")
    (line,) = [ln for ln in log.splitlines() if "marker-7c1e" in ln]
    assert "\\x1b]0;PWNED\\x07" in line
    assert not [c for c in log if c in "\x1b\x07\x9b\u202e"]
