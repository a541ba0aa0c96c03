"""Per-skill egress: each skill is held to its own allowedDomains, not the Expert's union.

The hostile skill may reach the registry host; the decoy declares no allowedDomains. Both
run in the same sandbox behind the same proxy: only the credential in each skill's own
HTTPS_PROXY (its exec environment, unreadable by the other skill's uid) tells them apart.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from support import registry_host

if TYPE_CHECKING:
    from support import Hostile

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

AUDIT_DEADLINE_S = 10
# Run as a skill: emit the credential in the skill's own proxy URL.
EMIT_OWN_CREDENTIAL = (
    "from urllib.parse import urlsplit\nemit(urlsplit(os.environ['HTTPS_PROXY']).password)"
)


async def _decisions_of(hostile: Hostile, skill: str, host: str) -> list[dict[str, Any]]:
    """Wait (bounded) for the audit's decision lines of `skill` about `host`."""
    with anyio.fail_after(AUDIT_DEADLINE_S):
        while True:
            found = [
                line
                for line in hostile.audit_lines()
                if line.get("event") == "decision"
                and line.get("skill") == skill
                and line.get("host") == host
            ]
            if found:
                return found
            await anyio.sleep(0.05)


async def test_the_decoy_cannot_reach_the_hostile_skills_allowed_host(hostile: Hostile) -> None:
    """The decoy's own credential gets 403 not-allowed for the host only `hostile` may reach.

    Fails when: the proxy ignores the skill credential and applies the Expert's merged list
    (checked by hand: with `Policy.skills` dropped in the proxy, the decoy got "200").
    """
    authority = f"{registry_host()}:443"
    assert await hostile.probe(f"emit(connect_via_proxy({authority!r}))", skill="decoy") == (
        "403 not-allowed"
    )
    decisions = await _decisions_of(hostile, "decoy", registry_host())
    assert {(d["decision"], d["reason"]) for d in decisions} == {("deny", "not-allowed")}
    assert all(d["resolved"] == [] and d["dialled"] is None for d in decisions)


async def test_the_decoys_ordinary_https_get_is_refused(hostile: Hostile) -> None:
    """Urllib in the decoy, following its HTTPS_PROXY, cannot fetch the hostile's allowed host.

    Fails when: the proxy ignores the skill credential (checked by hand, as above: "200").
    """
    code = (
        "import urllib.request\ntry:\n"
        f"    urllib.request.urlopen('https://{registry_host()}/', timeout=20)\n"
        "    emit('fetched')\nexcept OSError as exc:\n    emit(str(getattr(exc, 'reason', exc)))"
    )
    assert await hostile.probe(code, skill="decoy") == "Tunnel connection failed: 403 Forbidden"


@pytest.mark.parametrize("skill", ["hostile", "decoy"])
async def test_a_connect_without_a_skill_credential_is_refused(
    hostile: Hostile, skill: str
) -> None:
    """A CONNECT that drops the skill's credential is refused 403 no-skill-credential.

    Fails when: the policy has no per-skill section and the proxy falls back to the Expert's
    list (then the hostile skill's bare CONNECT got "200").
    """
    code = f"emit(connect_via_proxy({registry_host() + ':443'!r}, credential=False))"
    assert await hostile.probe(code, skill=skill) == "403 no-skill-credential"


async def test_the_hostile_skill_still_reaches_its_own_allowed_host(hostile: Hostile) -> None:
    """The hostile skill's credential opens a tunnel to its own host; the audit names it.

    Fails when: the engine does not put the skill's credential into its HTTPS_PROXY, or a
    client drops it on CONNECT (then "403 no-skill-credential").
    """
    authority = f"{registry_host()}:443"
    assert await hostile.probe(f"emit(tls_through_tunnel({authority!r}, {registry_host()!r}))") == (
        "tls-ok"
    )
    decisions = await _decisions_of(hostile, "hostile", registry_host())
    assert ("allow", "allowed") in {(d["decision"], d["reason"]) for d in decisions}


async def test_no_audit_line_holds_a_skill_token(hostile: Hostile) -> None:
    """The proxy's audit of the run names skills but holds neither skill's proxy token.

    Fails when: the proxy logs the Proxy-Authorization header or the raw request head.
    """
    tokens = [
        await hostile.probe(EMIT_OWN_CREDENTIAL, skill=skill) for skill in ("hostile", "decoy")
    ]
    assert all(isinstance(token, str) and len(token) >= 32 for token in tokens)
    assert tokens[0] != tokens[1]
    text = hostile.run.audit_path.read_text(encoding="utf-8")
    assert not [token for token in tokens if token in text]


async def test_the_hostile_skill_cannot_read_the_decoys_token(hostile: Hostile) -> None:
    """The decoy's token is in no /proc environ or cmdline the hostile skill can read.

    Fails when: the credential is set on the container or a command line rather than only in
    the decoy's exec environment, or both skills share a uid (then the hostile reads it).
    Checked by hand only that the scan finds the token where it is: with the needle not
    reversed, it found it in the probe's own /proc/<pid>/cmdline. Under gVisor, checked by
    hand: with both skills in one container (`containers=1`) the hostile skill reads the
    decoy's token from its /proc/<pid>/environ (Debian's runsc does not check who reads it).
    """
    token = await hostile.probe(EMIT_OWN_CREDENTIAL, skill="decoy")
    code = (
        # Reversed, so that this probe's own command line does not hold the token.
        f"import glob\nneedle = {token[::-1].encode()!r}[::-1]\nhits, read = [], 0\n"
        "for path in glob.glob('/proc/[0-9]*/environ') + glob.glob('/proc/[0-9]*/cmdline'):\n"
        "    try: data = open(path, 'rb').read()\n"
        "    except OSError: continue\n"
        "    read += 1\n"
        "    hits += [path] if needle in data else []\n"
        "emit({'hits': hits, 'read': read})"
    )
    result = await hostile.probe(code)
    assert result["read"] > 0
    assert result["hits"] == []


async def test_the_runs_copy_of_the_policy_lists_each_skill_without_tokens(
    hostile: Hostile,
) -> None:
    """The run folder's policy shows each skill's own list and holds no skill token.

    Fails when: the engine writes the proxy's policy, tokens included, to the run folder.
    """
    document = json.loads(hostile.run.policy_path.read_text(encoding="utf-8"))
    assert document["skillAllowedDomains"]["decoy"] == []
    assert document["skillAllowedDomains"]["hostile"] == [registry_host()]
    assert "skills" not in document
