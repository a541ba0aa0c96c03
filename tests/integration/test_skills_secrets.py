"""Secrets stay with their skill, host variables stay out, and Node's fetch obeys the proxy."""

from __future__ import annotations

import json
import secrets

import anyio
import pytest
from skills_support import (
    DEADLINE_S,
    expert_toml,
    labelled_containers,
    registry_host,
    require_engine,
    started,
    stdlib_skill,
    text_of,
    unique,
    write_expert,
)

from perstack_sandbox import state
from perstack_sandbox.engine import Sandbox

pytestmark = [pytest.mark.docker, pytest.mark.anyio]
# What every skill gets besides its own requiredEnv: the proxy/CA variables, PATH, HOME, LANG
# and TMPDIR (the private home, since /tmp is shared by every skill).
SANDBOX_VARIABLES = {"PATH", "HOME", "TMPDIR", "LANG"} | set(
    Sandbox("run", "c", "10.0.0.2", 3128, "p", "10.0.0.3", "n").proxy_env()
)


@pytest.fixture(autouse=True)
def _engine():
    require_engine()


@pytest.fixture
def anyio_backend():
    """Run async tests on asyncio."""
    return "asyncio"


async def _json_call(gateway, tool, arguments=None):
    result = await gateway.call_tool(tool, arguments or {})
    return result, text_of(result)


async def test_skill_cannot_read_another_skills_secret_and_host_canaries_stay_out(
    tmp_path, monkeypatch
):
    """Skill A sees only its own secret; B's environ is unreadable; no host canary anywhere."""
    value_a, value_b = secrets.token_hex(16), secrets.token_hex(16)
    canary_name, canary_value = "PERSTACK_CANARY_HOST_ONLY", secrets.token_hex(16)
    monkeypatch.setenv(canary_name, canary_value)
    monkeypatch.setenv("SECRET_A", value_a)
    expert = unique("secrets")
    (tmp_path / "b.env").write_text(f"SECRET_B={value_b}\n")
    config = write_expert(
        tmp_path,
        expert_toml(
            expert,
            stdlib_skill("a-skill", requiredEnv=["SECRET_A"]),
            stdlib_skill("b-skill", "--only", "whoami,env_names", requiredEnv=["SECRET_B"]),
        ),
    )
    with anyio.fail_after(DEADLINE_S):
        async with started(
            config, expert, env_paths=(tmp_path / "b.env",), prefix_tools=True
        ) as gateway:
            who_a = json.loads((await _json_call(gateway, "a-skill__whoami"))[1])
            who_b = json.loads(text_of(await gateway.skills["b-skill"].call_tool("whoami", {})))
            assert who_a["uid"] != who_b["uid"]
            assert who_a["uid"] != 0
            stolen, text = await _json_call(
                gateway, "a-skill__read_file", {"path": f"/proc/{who_b['pid']}/environ"}
            )
            assert stolen.is_error, text
            assert value_b not in text
            names_a = set(json.loads((await _json_call(gateway, "a-skill__env_names"))[1]))
            names_b = set(
                json.loads(text_of(await gateway.skills["b-skill"].call_tool("env_names", {})))
            )
            assert "SECRET_A" in names_a
            assert "SECRET_B" not in names_a
            assert names_b - {"SECRET_B"} == names_a - {"SECRET_A"}
            assert names_a == SANDBOX_VARIABLES | {"SECRET_A"}
            assert canary_name not in names_a
            _own, own_text = await _json_call(
                gateway, "a-skill__read_file", {"path": "/proc/self/environ"}
            )
            assert canary_value not in own_text
            for container in labelled_containers(expert):
                config_env = "\n".join(container.attrs["Config"].get("Env") or [])
                for leaked in (canary_name, canary_value, value_a, value_b):
                    assert leaked not in config_env
                for leaked in (canary_value, value_a, value_b):
                    assert leaked not in json.dumps(container.attrs)


@pytest.mark.usefixtures("state_home")  # its own state: `latest_run` must be this test's run
async def test_node_fetch_goes_through_the_proxy_allowed_host_ok_unlisted_host_refused(tmp_path):
    """Node's fetch() reaches an allowlisted host via the proxy; an unlisted host is refused."""
    allowed = registry_host()
    expert = unique("egress")
    skill = "\n".join(
        [
            f'[experts."{expert}".skills."probe"]',
            'type = "mcpStdioSkill"',
            'command = "node"',
            'args = ["egress_probe.mjs"]',
            f'allowedDomains = ["{allowed}"]',
        ]
    )
    config = write_expert(tmp_path, expert_toml(expert, skill))
    with anyio.fail_after(DEADLINE_S):
        async with started(config, expert) as gateway:
            ok, ok_text = await _json_call(gateway, "fetch_status", {"url": f"https://{allowed}/"})
            assert not ok.is_error, ok_text
            assert isinstance(json.loads(ok_text)["status"], int)
            refused, refused_text = await _json_call(
                gateway, "fetch_status", {"url": "https://example.org/"}
            )
            assert refused.is_error, refused_text
    run = state.latest_run()
    assert run is not None
    audit = [json.loads(line) for line in run.audit_path.read_text().splitlines() if line]
    hosts = json.dumps(audit)
    assert allowed in hosts
    assert "example.org" in hosts
