"""Fairness: a skill that exhausts its share of the proxy does not take its sibling's egress.

Its own Expert (runc only: the proxy is the same container under either isolation): the
hostile server as two skills, `hostile` and `decoy`, both allowed the registry host (derived
at run time). The hostile skill holds as many connections to the shared proxy as it can (silent
ones that never send a request head, and authenticated CONNECTs to its allowed host that never
send a ClientHello, re-opening whatever the proxy closes) while the decoy fetches the same host.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from conftest import require_engine
from support import CLI_ENV_FILE, EXPERT, Canaries, Hostile, quiet, registry_host, write_expert

from perstack_sandbox import state
from perstack_sandbox.launch import LaunchOptions, open_expert

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

# The proxy's default limits (proxy/_policy.py): 1024 connections in all, at most 512 of them
# without a request head yet (beyond that the oldest is evicted: the hostile skill stays just
# below, or its own re-opened connections would evict each other for ever), and 32 pending
# CONNECTs per skill.
SILENT = 400
# With the silent ones, more than the global cap: without per-skill limits the hostile skill
# alone fills it.
HALF_OPEN = 700
PENDING_SHARE = 32
HOLD_DEADLINE_S = 50  # the hostile skill lets go by itself after this (its snippet limit is 60)
WAIT_S = 60
SUCCESS = {"200", "301", "302", "304"}

# Run in the hostile skill: hold connections until the test writes /workspace/release.
HOLD = """
import os, resource, selectors, socket, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
address = proxy_address()
head = with_credential(b"CONNECT HOST:443 HTTP/1.1\\r\\nHost: HOST:443\\r\\n\\r\\n")

def silent():
    return socket.create_connection(address, timeout=10)

def half_open():
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(head)
    return sock

def answer(sock):
    data = b""
    try:
        while b"\\r\\n\\r\\n" not in data and (chunk := sock.recv(4096)):
            data += chunk
    except OSError as exc:
        return outcome_of(exc)
    return status_and_reason(data)

held = [(silent(), silent) for _ in range(SILENT)]
opened = [half_open() for _ in range(HALF_OPEN)]
answers = {}
for sock in opened:
    got = answer(sock)
    answers[got] = answers.get(got, 0) + 1
    if got == "200":
        held.append((sock, half_open))
    else:
        sock.close()
selector = selectors.DefaultSelector()
for sock, kind in held:
    selector.register(sock, selectors.EVENT_READ, kind)
open("/workspace/held", "w").close()
reopened, deadline = 0, time.monotonic() + HOLD_DEADLINE_S
while not os.path.exists("/workspace/release") and time.monotonic() < deadline:
    for key, _ in selector.select(0.2):  # the proxy closed it (a timeout, an eviction): re-open
        selector.unregister(key.fileobj)
        key.fileobj.close()
        try:
            selector.register(key.data(), selectors.EVENT_READ, key.data)
            reopened += 1
        except OSError:
            pass
emit({"answers": answers, "reopened": reopened})
"""


@pytest.fixture(scope="module")
async def fair(
    tmp_path_factory: pytest.TempPathFactory, skill_secrets: dict[str, str], security_state: None
) -> AsyncIterator[Hostile]:
    """Start the two-skill Expert, both skills allowed the registry host; yield it."""
    del security_state
    require_engine()
    folder = tmp_path_factory.mktemp("fair-expert")
    config, _ = write_expert(folder, registry_host())
    text = config.read_text(encoding="utf-8")
    decoy_env = 'requiredEnv = ["DECOY_SECRET"]\n'
    allowed = f'allowedDomains = ["{registry_host()}"]\n'
    config.write_text(text.replace(decoy_env, decoy_env + allowed), encoding="utf-8")
    workspace = tmp_path_factory.mktemp("fair-workspace")
    workspace.chmod(0o777)  # the hostile skill leaves its marker here
    options = LaunchOptions(
        config_path=config,
        expert=EXPERT,
        env_paths=(folder / CLI_ENV_FILE,),
        workspace=workspace,
        prefix_tools=True,
        progress=quiet,
    )
    async with open_expert(options) as gateway:
        run = state.latest_run()
        assert run is not None
        canaries = Canaries({"UNUSED": secrets.token_hex(8)})
        yield Hostile(gateway, run, skill_secrets, canaries, workspace, config, "runc")


async def _wait_for_file(path: Path) -> None:
    with anyio.fail_after(WAIT_S):
        while True:
            if await anyio.Path(path).exists():
                return
            await anyio.sleep(0.1)


async def test_a_skill_exhausting_its_share_leaves_the_decoys_allowed_fetch_working(
    fair: Hostile,
) -> None:
    """The decoy's HTTPS GET succeeds while the hostile holds 400 silent and 32 pending tunnels.

    The hostile's CONNECTs beyond its pending share are refused 503 and audited with its name.
    Fails when: the per-skill limits are removed (checked by hand: with `Shares.admit` in
    proxy/_fairness.py returning None for every skill, the hostile got 200 for 624 CONNECTs,
    which with its 400 silent ones filled the global cap of 1024, its other 76 got 503
    too-many-connections, and so did the decoy: its GET came back "OSError", not "200").
    """
    host = registry_host()
    code = HOLD
    for name, value in (
        ("HOLD_DEADLINE_S", HOLD_DEADLINE_S),
        ("HALF_OPEN", HALF_OPEN),
        ("SILENT", SILENT),
        ("HOST", host),
    ):
        code = code.replace(name, str(value))
    hostile: dict[str, Any] = {}

    async def hold() -> None:
        hostile.update(await fair.probe(code))

    async with anyio.create_task_group() as group:
        group.start_soon(hold)
        try:
            await _wait_for_file(fair.workspace / "held")
            fetched = await fair.probe(f"emit(https_get('https://{host}/'))", skill="decoy")
        finally:
            (fair.workspace / "release").write_text("", encoding="utf-8")
    assert fetched in SUCCESS, fetched
    answers = hostile["answers"]
    # Within its share the upstream decides (a slow registry may time out): never the limit.
    assert answers.pop("503 skill-pending-limit") == HALF_OPEN - PENDING_SHARE
    assert sum(answers.values()) == PENDING_SHARE
    assert answers["200"] > 0
    refused = [
        line
        for line in fair.audit_lines()
        if line.get("event") == "decision" and line.get("reason") == "skill-pending-limit"
    ]
    assert {line["skill"] for line in refused} == {"hostile"}
    assert len(refused) >= HALF_OPEN - PENDING_SHARE
    decoy = [line for line in fair.audit_lines() if line.get("skill") == "decoy"]
    assert ("allow", host) in {(line["decision"], line["host"]) for line in decoy}
