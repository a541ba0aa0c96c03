"""A skill's questions to the client (elicitation, sampling, roots) through the gateway.

Skills are told exactly the capabilities the host client declared; their requests reach that
client on the call they belong to (2025-11-25) or as InputRequiredResult (2026-07-28); with no
client able to answer, the skill gets a clear refusal. Each question is audited by tool.
"""

from __future__ import annotations

import json

import anyio
import mcp_types as types
import pytest
from gateway_support import DEADLINE_S, ERAS, RecordingSink, connected, sdk_skill, text_of
from mcp.shared.exceptions import MCPError

from perstack_sandbox.gateway import open_gateway

pytestmark = pytest.mark.anyio
CANARY = "an-answer-that-must-never-be-logged"


@pytest.fixture
def anyio_backend():
    """Run on asyncio (uvicorn needs it)."""
    return "asyncio"


async def elicit(_context, params):
    """Answer every form with the canary."""
    assert "favourite" in params.message
    return types.ElicitResult(action="accept", content={"answer": CANARY})


async def sample(_context, params):
    """Answer every sampling request with a fixed text."""
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(text=f"echo {params.messages[0].content.text}"),
        model="fixed",
    )


async def roots(_context):
    """Name one root."""
    return types.ListRootsResult(roots=[types.Root(uri="file:///projects/demo", name="demo")])


@pytest.mark.parametrize("mode", ERAS)
async def test_skills_are_told_exactly_the_capabilities_the_client_declared(mode):
    """A client with elicitation only makes the skill see elicitation only, nothing else."""
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n")]) as gateway,
            connected(gateway, mode, elicitation_callback=elicit) as client,
        ):
            declared = json.loads(text_of(await client.call_tool("declared", {})))
    assert set(declared) == {"elicitation"}


async def test_a_client_without_capabilities_leaves_the_skill_with_none():
    """With a client that declares nothing, the skill is told nothing (and not restarted)."""
    with anyio.fail_after(DEADLINE_S):
        async with open_gateway([sdk_skill("n")]) as gateway, connected(gateway, "legacy") as c:
            declared = json.loads(text_of(await c.call_tool("declared", {})))
    assert declared == {}


@pytest.mark.parametrize("mode", ERAS)
async def test_elicitation_sampling_and_roots_reach_the_client_and_come_back(mode):
    """The skill's elicitation, sampling and roots requests are answered by the host client."""
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n")]) as gateway,
            connected(
                gateway,
                mode,
                elicitation_callback=elicit,
                sampling_callback=sample,
                list_roots_callback=roots,
            ) as client,
        ):
            asked = await client.call_tool("ask", {"question": "Your favourite colour?"})
            sampled = await client.call_tool("sample", {"prompt": "hi"})
            listed = await client.call_tool("roots", {})
    assert text_of(asked) == f"accept: {CANARY}"
    assert text_of(sampled) == "sampled: echo hi"
    assert text_of(listed) == "file:///projects/demo"


@pytest.mark.parametrize("mode", ERAS)
async def test_over_http_the_skills_questions_reach_the_client_too(mode):
    """Over streamable HTTP, elicitation reaches the client in both eras."""
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n")]) as gateway,
            connected(gateway, mode, http=True, elicitation_callback=elicit) as client,
        ):
            asked = await client.call_tool("ask", {"question": "Your favourite food?"})
    assert text_of(asked) == f"accept: {CANARY}"


@pytest.mark.parametrize("mode", ERAS)
async def test_with_no_client_able_to_answer_the_skill_is_refused_clearly(mode):
    """Without a client that declared sampling, the skill's sampling request fails, saying why."""
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n")]) as gateway,
            connected(gateway, mode, elicitation_callback=elicit) as client,
        ):
            with pytest.raises(MCPError, match="no connected client can answer it"):
                await client.call_tool("sample", {"prompt": "hi"})


async def test_questions_are_audited_by_tool_and_outcome_never_the_answer():
    """The audit records an elicitation with its skill, tool, mode and outcome, not the answer."""
    sink = RecordingSink()
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n")], audit=sink) as gateway,
            connected(gateway, "legacy", elicitation_callback=elicit) as client,
        ):
            await client.call_tool("ask", {"question": "Your favourite tree?"})
    records = sink.records
    asked = [r for r in records if r["kind"] == "elicitation/create"]
    assert [(r["skill"], r["tool"], r["mode"], r["outcome"]) for r in asked] == [
        ("n", "ask", "form", "accept")
    ]
    assert CANARY not in json.dumps(records)
    assert CANARY not in "\n".join(sink.text)


async def test_a_question_the_skill_cancels_is_cancelled_at_the_client():
    """When the skill gives up on its question, the client's pending elicitation is cancelled."""
    cancelled = anyio.Event()

    async def never_answer(_context, _params):
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n")]) as gateway,
            connected(gateway, "legacy", elicitation_callback=never_answer) as client,
        ):
            result = await client.call_tool("impatient", {})
            await cancelled.wait()
    assert text_of(result) == "gave up: MCPError"
