"""Resources, prompts, completion, logging, progress, list changes and tasks through the gateway.

The skills are the SDK fixture skill (tests/fixtures/sdk_skill.py) as local processes; the
host client is the Python SDK client in both eras (2025-11-25 handshake, 2026-07-28).
"""

from __future__ import annotations

import json

import anyio
import mcp_types as types
import pytest
from gateway_support import (
    DEADLINE_S,
    ERAS,
    Collected,
    Lines,
    RecordingSink,
    connected,
    raw_peer,
    sdk_skill,
    text_of,
)
from mcp.shared.exceptions import MCPError

from perstack_sandbox.errors import GatewayError
from perstack_sandbox.gateway import open_gateway

pytestmark = [
    pytest.mark.anyio,
    # logging/setLevel and resources/subscribe are exercised on 2025-11-25 on purpose
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]
CANARY = "value-that-must-never-be-logged"


@pytest.fixture
def anyio_backend():
    """Run on asyncio (uvicorn needs it)."""
    return "asyncio"


@pytest.mark.parametrize("mode", ERAS)
async def test_resources_and_templates_of_every_skill_are_listed_and_read(mode):
    """Each skill's resources and templates are listed; a read goes to the skill that owns it."""
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("one"), sdk_skill("two")], prefix_tools=True) as gateway,
            connected(gateway, mode) as client,
        ):
            listed = [r.uri for r in (await client.list_resources()).resources]
            templates = (await client.list_resource_templates()).resource_templates
            listed_read = await client.read_resource("perstack-skill://two/note://two/b")
            templated = await client.read_resource("perstack-skill://one/note://one/42")
    assert sorted(listed) == [
        "perstack-skill://one/note://one/a",
        "perstack-skill://one/note://one/b",
        "perstack-skill://two/note://two/a",
        "perstack-skill://two/note://two/b",
    ]
    assert sorted(t.uri_template for t in templates) == [
        "perstack-skill://one/note://one/{id}",
        "perstack-skill://two/note://two/{id}",
    ]
    assert listed_read.contents[0].text == "contents of note://two/b"
    assert listed_read.contents[0].uri == "perstack-skill://two/note://two/b"
    assert templated.contents[0].text == "contents of note://one/42"


async def test_uris_and_prompt_names_pass_through_unchanged_without_prefixing():
    """Without --prefix-tools a single skill's URIs, templates and prompt names are its own."""
    with anyio.fail_after(DEADLINE_S):
        async with open_gateway([sdk_skill("n")]) as gateway, connected(gateway, "legacy") as c:
            uris = [r.uri for r in (await c.list_resources()).resources]
            prompt = await c.get_prompt("greet", {"who": "Ada"})
            templated = await c.read_resource("note://n/7")
    assert uris == ["note://n/a", "note://n/b"]
    assert prompt.messages[0].content.text == "Hello Ada"
    assert prompt.messages[1].content.uri == "note://n/a"
    assert templated.contents[0].text == "contents of note://n/7"


async def test_a_prompt_offered_by_two_skills_is_a_startup_error_naming_both():
    """Two skills with a prompt `greet` collide like tools do, and the error says how to fix it."""
    skills = [sdk_skill("one", pick=("greet",)), sdk_skill("two", pick=("greet",))]
    with anyio.fail_after(DEADLINE_S), pytest.raises(GatewayError) as caught:
        async with open_gateway(skills):
            pytest.fail("the gateway must not start")
    message = str(caught.value)
    for expected in ("prompt name 'greet'", "'one'", "'two'", "pick/omit", "--prefix-tools"):
        assert expected in message


@pytest.mark.parametrize("mode", ERAS)
async def test_prefixed_prompts_and_the_uris_in_their_results_name_their_skill(mode):
    """With prefixing, prompts are `skill__name` and URIs in results are readable as returned."""
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("one"), sdk_skill("two")], prefix_tools=True) as gateway,
            connected(gateway, mode) as client,
        ):
            names = sorted(p.name for p in (await client.list_prompts()).prompts)
            prompt = await client.get_prompt("two__greet", {"who": "Alan"})
            link = prompt.messages[1].content
            followed = await client.read_resource(link.uri)
    assert names == ["one__greet", "two__greet"]
    assert prompt.messages[0].content.text == "Hello Alan"
    assert link.uri == "perstack-skill://two/note://two/a"
    assert followed.contents[0].text == "contents of note://two/a"


async def test_pick_keeps_only_named_prompts_and_resources_and_refuses_the_rest():
    """A pick list hides unnamed prompts and resources, and reads of hidden URIs are refused."""
    skill = sdk_skill("n", pick=("echo", "greet", "n-b"))
    with anyio.fail_after(DEADLINE_S):
        async with open_gateway([skill]) as gateway, connected(gateway, "legacy") as client:
            tools = [t.name for t in (await client.list_tools()).tools]
            prompts = [p.name for p in (await client.list_prompts()).prompts]
            uris = [r.uri for r in (await client.list_resources()).resources]
            templates = (await client.list_resource_templates()).resource_templates
            with pytest.raises(MCPError, match="not among skill 'n'"):
                await client.read_resource("note://n/a")
    assert (tools, prompts, uris, templates) == (["echo"], ["greet"], ["note://n/b"], [])


async def test_omit_hides_a_resource_and_its_reads():
    """An omitted resource name is neither listed nor readable; the others are."""
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n", omit=("n-a", "n-any"))]) as gateway,
            connected(gateway, "legacy") as client,
        ):
            uris = [r.uri for r in (await client.list_resources()).resources]
            kept = await client.read_resource("note://n/b")
            with pytest.raises(MCPError, match="not among skill 'n'"):
                await client.read_resource("note://n/a")
    assert uris == ["note://n/b"]
    assert kept.contents[0].text == "contents of note://n/b"


@pytest.mark.parametrize("mode", ERAS)
async def test_completion_is_answered_by_the_skill_that_owns_the_prompt(mode):
    """completion/complete for a prompt argument reaches its skill under the original name."""
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("one"), sdk_skill("two")], prefix_tools=True) as gateway,
            connected(gateway, mode) as client,
        ):
            done = await client.complete(
                types.PromptReference(name="one__greet"), {"name": "who", "value": "A"}
            )
            template = types.ResourceTemplateReference(uri="perstack-skill://two/note://two/{id}")
            by_template = await client.complete(template, {"name": "id", "value": "Al"})
    assert done.completion.values == ["Ada", "Alan"]
    assert by_template.completion.values == ["Alan"]


async def test_log_level_is_forwarded_and_messages_come_back_tagged_with_the_skill():
    """logging/setLevel reaches the skill (it filters), and its messages carry the skill name."""
    messages: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params):
        messages.append(params)

    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n")]) as gateway,
            connected(gateway, "legacy", logging_callback=on_log) as client,
        ):
            await client.set_logging_level("warning")
            await client.call_tool("log", {"message": "quiet", "level": "info"})
            await client.call_tool("log", {"message": "loud", "level": "error"})
            await client.call_tool("echo", {"text": "flush"})
    assert [(m.level, m.logger, m.data) for m in messages] == [("error", "n/fixture", "loud")]


async def test_a_2026_client_gets_log_messages_on_the_call_that_opted_in():
    """In the 2026-07-28 era, a call carrying a log level gets the skill's messages at it."""
    messages: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params):
        messages.append(params)

    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n")]) as gateway,
            connected(gateway, "auto", logging_callback=on_log, log_level="info") as client,
        ):
            await client.call_tool("log", {"message": "heard", "level": "info"})
            await client.call_tool("log", {"message": "below", "level": "debug"})
    assert [(m.level, m.logger, m.data) for m in messages] == [("info", "n/fixture", "heard")]


@pytest.mark.parametrize("mode", ERAS)
async def test_progress_reaches_the_callers_progress_token(mode):
    """A skill's progress notifications for a call reach the host's progress callback."""
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress, total, message):
        seen.append((progress, total, message))

    with anyio.fail_after(DEADLINE_S):
        async with open_gateway([sdk_skill("n")]) as gateway, connected(gateway, mode) as client:
            result = await client.call_tool("progress", {"steps": 3}, progress_callback=on_progress)
    assert text_of(result) == "done"
    assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


async def test_a_cancelled_call_is_cancelled_at_the_skill_and_never_answered():
    """notifications/cancelled stops the skill's work and the gateway sends no response."""
    lines = Lines()
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n", lines=lines)]) as gateway,
            raw_peer(gateway) as peer,
        ):
            await peer.send(
                {
                    "jsonrpc": "2.0",
                    "id": 7,
                    "method": "tools/call",
                    "params": {"name": "slow", "arguments": {"seconds": 60}},
                }
            )
            await lines.wait_for("started slow")
            await peer.send(
                {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}}
            )
            await lines.wait_for("cancelled slow")
            await peer.request(8, "ping")
    assert not [message for message in peer.seen if message.get("id") == 7]


async def test_list_changes_reach_a_handshake_era_client_and_the_new_tool_is_listed():
    """A skill's tools/list_changed reaches the host client, and relisting shows the new tool."""
    changes = Collected()

    async def on_message(message):
        if isinstance(message, types.ToolListChangedNotification):
            changes.add(message)

    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n")]) as gateway,
            connected(gateway, "legacy", message_handler=on_message) as client,
        ):
            await client.call_tool("grow", {})
            await changes.first.wait()
            names = [tool.name for tool in (await client.list_tools()).tools]
    assert "grown" in names


async def test_list_changes_and_resource_updates_reach_a_2026_listen_stream():
    """In the 2026-07-28 era, list changes and updates of a listened URI arrive as events."""
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n")]) as gateway,
            connected(gateway, "auto") as client,
            client.listen(tools_list_changed=True, resource_subscriptions=["note://n/a"]) as sub,
        ):
            touched = await client.call_tool("touch", {"uri": "note://n/a"})
            first = await anext(aiter(sub))
            await client.call_tool("grow", {})
            second = await anext(aiter(sub))
    assert "subscribed: True" in text_of(touched)
    assert {type(first).__name__, type(second).__name__} == {"ResourceUpdated", "ToolsListChanged"}


async def test_resource_updates_reach_only_a_subscribed_handshake_era_client():
    """resources/subscribe reaches the skill, and its update comes back for that URI."""
    updates = Collected()

    async def on_message(message):
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.add(message.params.uri)

    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n")], prefix_tools=True) as gateway,
            connected(gateway, "legacy", message_handler=on_message) as client,
        ):
            uri = "perstack-skill://n/note://n/a"
            await client.subscribe_resource(uri)
            touched = await client.call_tool("n__touch", {"uri": "note://n/a"})
            await client.call_tool("n__touch", {"uri": "note://n/b"})
            await updates.first.wait()
    assert "subscribed: True" in text_of(touched)
    assert updates.items == [uri]


async def test_task_augmented_calls_and_task_requests_pass_through():
    """tools/call with `task` answers the skill's CreateTaskResult; tasks/* reach that skill."""
    with anyio.fail_after(DEADLINE_S):
        async with open_gateway([sdk_skill("n")]) as gateway, raw_peer(gateway) as peer:
            call = {"name": "research", "arguments": {"topic": "owls"}, "task": {"ttl": 60000}}
            created = await peer.request(1, "tools/call", call)
            task_id = created["result"]["task"]["taskId"]
            status = await peer.request(2, "tasks/get", {"taskId": task_id})
            payload = await peer.request(3, "tasks/result", {"taskId": task_id})
            unknown = await peer.request(4, "tasks/get", {"taskId": "nobody-s"})
    assert status["result"]["status"] == "completed"
    assert payload["result"]["content"][0]["text"] == "report on owls"
    assert "no task 'nobody-s'" in unknown["error"]["message"]


async def test_reads_and_prompt_gets_are_audited_by_uri_and_shape_never_values():
    """The audit names the resource URI and skill, and a prompt's argument shape, not values."""
    sink = RecordingSink()
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n")], audit=sink) as gateway,
            connected(gateway, "legacy") as c,
        ):
            await c.read_resource("note://n/a")
            await c.get_prompt("greet", {"who": CANARY})
    records = sink.records
    kinds = {record["kind"]: record for record in records}
    assert kinds["resources/read"]["uri"] == "note://n/a"
    assert kinds["resources/read"]["skill"] == "n"
    assert kinds["prompts/get"]["prompt"] == "greet"
    assert kinds["prompts/get"]["argShape"] == {"who": "str"}
    assert CANARY not in json.dumps(records)
    assert CANARY not in "\n".join(sink.text)


async def test_a_skill_restarted_for_new_capabilities_gets_its_level_and_subscriptions_back():
    """After a restart (a second client declared more), the skill is told them again."""
    with anyio.fail_after(DEADLINE_S):
        async with (
            open_gateway([sdk_skill("n")]) as gateway,
            connected(gateway, "legacy") as first,
        ):
            await first.set_logging_level("warning")
            await first.subscribe_resource("note://n/a")
            before = json.loads(text_of(await first.call_tool("state", {})))

            async def elicit(_context, _params):
                return types.ElicitResult(action="decline")

            async with connected(gateway, "legacy", elicitation_callback=elicit) as second:
                declared = json.loads(text_of(await second.call_tool("declared", {})))
                after = json.loads(text_of(await second.call_tool("state", {})))
                while after != before:  # restored in the background, right after the restart
                    after = json.loads(text_of(await second.call_tool("state", {})))
    assert before == {"level": "warning", "subscribed": ["note://n/a"]}
    assert set(declared) == {"elicitation"}
    assert after == before
