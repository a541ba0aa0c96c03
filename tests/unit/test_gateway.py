"""Gateway logic with local stdlib skills and in-memory MCP clients (no Docker)."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import httpx2
import mcp_types as types
import pytest
from gateway_support import serving_over_http
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from perstack_sandbox.errors import GatewayError, SkillError, UsageError
from perstack_sandbox.gateway import (
    argument_shape,
    build_routes,
    make_server,
    open_gateway,
    parse_listen,
)
from perstack_sandbox.plan import InteractiveTool
from perstack_sandbox.skills import SkillSession, SkillSpec, local_process

if TYPE_CHECKING:
    from perstack_sandbox.audit import ToolCall

pytestmark = pytest.mark.anyio
SKILL = Path(__file__).parents[1] / "fixtures" / "stdlib_skill.py"
DEADLINE_S = 30
CANARY = "v4lue-that-must-not-be-logged"
ASK = InteractiveTool(
    skill="human",
    name="ask_user",
    description="Ask the user",
    input_schema={"type": "object", "properties": {"question": {"type": "string"}}},
)


@pytest.fixture
def anyio_backend():
    """Run the async tests on asyncio (uvicorn needs it)."""
    return "asyncio"


def skill(name, *args, **spec):
    """Build a SkillSession over a local subprocess running the stdlib fixture skill."""
    factory = functools.partial(
        local_process, [sys.executable, str(SKILL), *args], env={"PATH": "/usr/bin:/bin"}
    )
    return SkillSession(SkillSpec(name, **spec), factory)


class RecordingSink:
    """An `AuditSink` that keeps everything it is told."""

    def __init__(self):
        """Start with nothing recorded."""
        self.calls: list[ToolCall] = []
        self.stderr: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self.infos: list[str] = []

    def tool_call(self, call):
        """Keep the call."""
        self.calls.append(call)

    def skill_stderr(self, skill, line):
        """Keep the stderr line."""
        self.stderr.append((skill, line))

    def warning(self, message):
        """Keep the warning."""
        self.warnings.append(message)

    def info(self, message):
        """Keep the diagnostic."""
        self.infos.append(message)


def text_of(result):
    """Join the text blocks of a CallToolResult."""
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


def test_argument_shape_keeps_keys_and_types_but_never_values():
    """The logged shape of arguments names keys and types only."""
    shape = argument_shape({"token": CANARY, "n": 3, "x": 1.5, "ok": True, "l": [CANARY, "b"]})
    assert shape == {"token": "str", "n": "int", "x": "float", "ok": "bool", "l": ["str"]}
    assert CANARY not in json.dumps(shape)


def test_collision_names_both_skills_and_suggests_fixes():
    """Two skills offering the same tool name is an error naming both and the remedies."""
    tool = types.Tool(name="echo", input_schema={"type": "object"})
    with pytest.raises(GatewayError) as caught:
        build_routes({"alpha": [tool], "beta": [tool]})
    message = str(caught.value)
    for expected in ("'alpha'", "'beta'", "pick/omit", "--prefix-tools", "alpha__echo"):
        assert expected in message


def test_prefix_tools_exposes_skill_double_underscore_tool():
    """With prefixing, every tool is exposed as `skill__tool`, so duplicates coexist."""
    tool = types.Tool(name="echo", input_schema={"type": "object"})
    routes = build_routes({"alpha": [tool], "beta": [tool]}, prefix=True)
    assert set(routes) == {"alpha__echo", "beta__echo"}
    assert routes["beta__echo"].original == "echo"


@pytest.mark.parametrize("address", ["0.0.0.0:8080", "10.1.2.3:80", "127.0.0.1", "h:x"])
def test_http_listen_address_must_be_loopback_host_and_port(address):
    """`--http` refuses non-loopback hosts and malformed addresses."""
    with pytest.raises(UsageError):
        parse_listen(address)


async def test_tools_of_all_skills_are_listed_after_pick_and_omit():
    """Pick keeps only the named tools, omit drops tools; names stay original."""
    skills = [
        skill("a", "--only", "echo,add,sleep", pick=("echo", "add")),
        skill("b", "--only", "whoami,env_names,read_file", omit=("read_file",)),
    ]
    with anyio.fail_after(DEADLINE_S):
        async with open_gateway(skills) as gateway, Client(make_server(gateway)) as client:
            listed = await client.list_tools()
            assert sorted(tool.name for tool in listed.tools) == [
                "add",
                "echo",
                "env_names",
                "whoami",
            ]
            result = await client.call_tool("echo", {"text": "hello"})
            assert text_of(result) == "hello"
            assert not result.is_error


async def test_unknown_or_omitted_tool_is_refused():
    """Calling a tool that pick/omit removed is a protocol error, not a skill call."""
    skills = [skill("a", "--only", "echo,add", omit=("add",))]
    with anyio.fail_after(DEADLINE_S):
        async with open_gateway(skills) as gateway:
            with pytest.raises(UsageError, match="no tool named 'add'"):
                await gateway.call_tool("add", {"a": 1, "b": 2})


async def test_name_collision_is_a_startup_error_unless_prefixed():
    """Two skills exposing `echo` fail at startup; --prefix-tools makes both callable."""
    with anyio.fail_after(DEADLINE_S):
        with pytest.raises(GatewayError, match="'one' and skill 'two'"):
            async with open_gateway([skill("one"), skill("two")]):
                pytest.fail("the gateway must not start")
        async with open_gateway([skill("one"), skill("two")], prefix_tools=True) as gateway:
            result = await gateway.call_tool("two__echo", {"text": "x"})
            assert text_of(result) == "x"


async def test_lazy_skill_starts_on_first_use_and_eager_skill_with_gateway():
    """A lazyInit skill has no process until its tools are needed; others start at once."""
    eager, lazy = skill("eager", "--only", "echo"), skill("lazy", "--only", "add", lazy_init=True)
    with anyio.fail_after(DEADLINE_S):
        async with open_gateway([eager, lazy]) as gateway:
            assert eager.is_running
            assert not lazy.is_running
            result = await gateway.call_tool("add", {"a": 2, "b": 3})
            assert text_of(result) == "5.0"
            assert lazy.is_running


async def test_crashed_skill_is_reported_then_restarted_once():
    """A death reports exit code and stderr; the next call restarts; a second death is final."""
    with anyio.fail_after(DEADLINE_S):
        async with open_gateway([skill("a", "--banner")]) as gateway:
            with pytest.raises(SkillError) as died:
                await gateway.call_tool("crash", {"message": "boom-first"})
            assert "exited with code 3" in str(died.value)
            assert "boom-first" in str(died.value)
            assert text_of(await gateway.call_tool("echo", {"text": "back"})) == "back"
            with pytest.raises(SkillError):
                await gateway.call_tool("crash", {"message": "boom-second"})
            with pytest.raises(SkillError, match="already restarted once"):
                await gateway.call_tool("echo", {"text": "again"})


async def test_skill_death_reaches_mcp_client_as_error_result():
    """Through MCP, a crash is an isError result carrying the stderr tail."""
    with anyio.fail_after(DEADLINE_S):
        async with open_gateway([skill("a")]) as gateway, Client(make_server(gateway)) as client:
            result = await client.call_tool("crash", {"message": "gone"})
            assert result.is_error
            assert "gone" in text_of(result)


async def test_a_gateway_whose_sandbox_went_refuses_calls_and_tells_its_clients():
    """Once `ends_when` returns, calls get its reason as an error, clients a log message.

    The log message reaches clients of the initialize handshake (a modern, stateless
    connection has no channel for a notification outside a request; its calls are refused).
    """
    gone = anyio.Event()
    reason = "run r is over: its sandbox container was removed; its skills are gone"
    logged: list[types.LoggingMessageNotificationParams] = []
    told = anyio.Event()

    async def ends_when() -> str:
        await gone.wait()
        return reason

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logged.append(params)
        told.set()

    sink = RecordingSink()
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([skill("a")], audit=sink, ends_when=ends_when) as gateway,
            Client(make_server(gateway), mode="legacy", logging_callback=on_log) as client,
        ):
            assert text_of(await client.call_tool("echo", {"text": "hi"})) == "hi"
            gone.set()
            assert await gateway.wait_stopped() == reason
            refused = await client.call_tool("echo", {"text": "again"})
            await told.wait()  # the notification travels through the in-memory transport
    assert refused.is_error
    assert reason in text_of(refused)
    assert [(m.level, m.data) for m in logged] == [("error", reason)]
    assert reason in sink.warnings


async def test_request_timeout_comes_from_config():
    """A call slower than the skill's timeout fails with a timeout error naming the tool."""
    with anyio.fail_after(DEADLINE_S):
        async with open_gateway([skill("a", timeout_s=0.5)]) as gateway:
            with pytest.raises(
                SkillError, match=r"did not answer tools/call 'sleep' within 0\.5 s"
            ):
                await gateway.call_tool("sleep", {"seconds": 10})


async def test_tool_calls_reach_the_runs_sink_by_name_and_shape_only():
    """The run's sink gets the tool and argument types of a call, never argument values."""
    sink = RecordingSink()
    with anyio.fail_after(DEADLINE_S):
        async with open_gateway([skill("a")], audit=sink) as gateway:
            await gateway.call_tool("echo", {"text": CANARY})
    [call] = sink.calls
    assert (call.skill, call.tool, call.arg_shape, call.outcome) == (
        "a",
        "echo",
        {"text": "str"},
        "ok",
    )
    assert call.describe().startswith('tools/call echo (skill a) args={"text": "str"} -> ok')
    assert CANARY not in repr(sink.calls)


async def test_interactive_tool_without_elicitation_says_input_is_needed():
    """A client without elicitation gets an error result that says input is needed."""
    with anyio.fail_after(DEADLINE_S):
        async with open_gateway([], [ASK]) as gateway, Client(make_server(gateway)) as client:
            assert [tool.name for tool in (await client.list_tools()).tools] == ["ask_user"]
            result = await client.call_tool("ask_user", {"question": "Deploy?"})
            assert result.is_error
            assert "Input is needed" in text_of(result)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_interactive_tool_asks_the_client_through_elicitation(mode):
    """With elicitation, the user's answer is the tool result (handshake and 2026 eras)."""
    asked: list[str] = []

    async def elicit(_context, params):
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"answer": "yes, deploy"})

    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([], [ASK]) as gateway,
            Client(make_server(gateway), mode=mode, elicitation_callback=elicit) as client,
        ):
            result = await client.call_tool("ask_user", {"question": "Deploy?"})
    assert not result.is_error
    assert text_of(result) == "yes, deploy"
    assert asked == ["Deploy?"]


async def test_interactive_tool_uses_the_local_prompter_when_no_client_can_ask():
    """The `call` command's terminal prompter answers when there is no MCP client."""

    async def prompter(message):
        return f"answer to {message}"

    with anyio.fail_after(DEADLINE_S):
        async with open_gateway([], [ASK], prompter=prompter) as gateway:
            result = await gateway.call_tool("ask_user", {"question": "Q"})
    assert text_of(result) == "answer to Q"


async def test_http_transport_requires_bearer_token_and_loopback_origin():
    """Over HTTP: no token is 401, a foreign Origin is 403, the right token lists tools."""
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([skill("a", "--only", "echo")]) as gateway,
            serving_over_http(gateway) as (url, token),
        ):
            auth = {"Authorization": f"Bearer {token}"}
            async with httpx2.AsyncClient() as raw:
                body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
                assert (await raw.post(url, json=body)).status_code == 401
                evil = {**auth, "Origin": "http://evil.invalid"}
                assert (await raw.post(url, json=body, headers=evil)).status_code == 403
            async with (
                httpx2.AsyncClient(headers=auth) as http,
                Client(streamable_http_client(url, http_client=http)) as client,
            ):
                tools = await client.list_tools()
                assert [tool.name for tool in tools.tools] == ["echo"]
                assert text_of(await client.call_tool("echo", {"text": "via http"})) == "via http"


class _Recorder(logging.Handler):
    """Keep the records it is handed, and whether it was closed."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.closed = False

    def emit(self, record):
        self.records.append(record)

    def close(self):
        self.closed = True
        super().close()


async def test_serving_over_http_leaves_the_host_programs_logging_alone():
    """Serving HTTP keeps an embedding program's log handlers open; calls reach the run's sink.

    Fails when: uvicorn applies its own logging config (the default `log_config`), whose
    dictConfig shuts down every existing handler of the process the library runs in.
    """
    recorder, sink = _Recorder(), RecordingSink()
    logging.getLogger().addHandler(recorder)
    try:
        with anyio.fail_after(DEADLINE_S):
            async with (
                open_gateway([skill("a", "--only", "echo")], audit=sink) as gateway,
                serving_over_http(gateway) as (url, token),
                httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
                Client(streamable_http_client(url, http_client=http)) as client,
            ):
                await client.call_tool("echo", {"text": "audited"})
    finally:
        logging.getLogger().removeHandler(recorder)
    assert not recorder.closed
    assert [call.tool for call in sink.calls] == ["echo"]


PROMPT_SCRIPT = """
import anyio
from perstack_sandbox.gateway import open_gateway, terminal_prompter
from perstack_sandbox.plan import InteractiveTool

ask = InteractiveTool(skill="human", name="ask_user", input_schema={"type": "object"})

async def main():
    async with open_gateway([], [ask], prompter=terminal_prompter()) as gateway:
        result = await gateway.call_tool("ask_user", {"question": "Deploy now?"})
        print(result.content[0].text, flush=True)

anyio.run(main)
"""


def test_call_on_a_terminal_prompts_there_for_interactive_tools():
    """With stdin and stderr on a TTY, the question is asked there and the typed line answers."""
    main_fd, child_fd = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-c", PROMPT_SCRIPT],
        stdin=child_fd,
        stderr=child_fd,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        os.close(child_fd)
        seen, deadline = b"", time.monotonic() + DEADLINE_S
        while b"> " not in seen:
            ready, _, _ = select.select([main_fd], [], [], max(0, deadline - time.monotonic()))
            assert ready, f"no prompt within {DEADLINE_S} s; saw {seen!r}"
            seen += os.read(main_fd, 1024)
        os.write(main_fd, b"yes, ship it\n")
        out, _ = child.communicate(timeout=DEADLINE_S)
    os.close(main_fd)
    assert b"Deploy now?" in seen
    assert out.strip() == "yes, ship it"


async def test_call_command_turns_a_skills_protocol_error_into_an_input_error():
    """For `call`, a skill rejecting the arguments is bad input (exit 2), naming the skill."""
    with anyio.fail_after(DEADLINE_S):
        async with open_gateway([skill("a", "--only", "echo")]) as gateway:
            gateway._routes["ghost"] = dataclasses.replace(
                gateway.route("echo"), exposed="ghost", original="no-such-tool"
            )
            with pytest.raises(UsageError, match="skill 'a' refused tools/call 'ghost'"):
                await gateway.call_tool_checked("ghost", {})
