"""The exec's environment reader: a skill gets exactly the environment sent on its stdin.

Kubernetes' exec cannot set variables, so the environment travels as the first stdin line;
the reader runs here as a local process (the same `python3 -I -c` the pod runs).
"""

from __future__ import annotations

import json
import subprocess
import sys

from perstack_sandbox.kube._exec import ENV_READER, env_line, exec_argv, exit_code

SHOW = "import json,os,sys; print(json.dumps(dict(os.environ))); print(sys.stdin.read(), end='')"


def _run_reader(env, rest: bytes) -> tuple[dict[str, str], str]:
    argv = [sys.executable, "-I", "-c", ENV_READER, sys.executable, "-I", "-c", SHOW]
    done = subprocess.run(  # noqa: PLW1510 - the code is asserted
        argv,
        input=env_line(env) + rest,
        capture_output=True,
        env={"LEAK": "inherited"},
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    first, _, remainder = done.stdout.decode().partition("\n")
    return json.loads(first), remainder


def test_the_skill_gets_exactly_the_sent_environment_and_nothing_inherited():
    """Values with newlines and '=' arrive intact; the exec's own environment is dropped.

    Seen failing with the reader passing os.environ on (LEAK appeared in the skill).
    """
    sent = {"EXA_API_KEY": "line1\nline2=x", "HOME": "/home/skill10001", "LC_ALL": "C.UTF-8"}
    received, _ = _run_reader(sent, b"")
    assert received == sent


def test_the_stdin_after_the_environment_reaches_the_skill_unread():
    """The reader reads byte by byte: the MCP messages that follow are not swallowed.

    Seen failing with `sys.stdin.buffer.readline()` in the reader (the rest vanished).
    """
    message = b'{"jsonrpc": "2.0", "id": 1, "method": "initialize"}\n' * 3
    _, rest = _run_reader({"LC_ALL": "C.UTF-8"}, message)
    assert rest == message.decode()


def test_the_exec_command_holds_no_value():
    """The command line is the reader, the launcher and the skill's argv: no variable in it."""
    argv = exec_argv(["/opt/perstack/entry/search", "--flag"])
    assert argv[:3] == ["python3", "-I", "-c"]
    assert argv[4:] == ["/usr/local/bin/perstack-launch", "/opt/perstack/entry/search", "--flag"]


def test_the_status_channel_gives_the_exit_code():
    """Success is 0, a NonZeroExitCode cause its number, anything else unknown."""
    assert exit_code({"status": "Success"}) == 0
    failure = {"status": "Failure", "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}}
    assert exit_code(failure) == 3
    assert exit_code({"status": "Failure", "message": "boom"}) is None
