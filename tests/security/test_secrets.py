"""Secrets: the decoy's secret and the host's canaries, looked for everywhere they could leak."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import docker
import pytest

if TYPE_CHECKING:
    from support import Hostile

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

# What a skill's environment may hold besides its own requiredEnv (see engine.Sandbox.proxy_env).
SANDBOX_VARIABLES = re.compile(
    r"^(PATH|HOME|TMPDIR|LANG|HTTPS?_PROXY|https?_proxy|NO_PROXY|no_proxy|NODE_USE_ENV_PROXY|"
    r"SSL_CERT_FILE|NODE_EXTRA_CA_CERTS|REQUESTS_CA_BUNDLE)$"
)
SCAN_SKIP = ("/proc", "/sys", "/dev")
SCAN_MAX_BYTES = 64 * 1024**2  # larger files come from the image, built before any canary


def leaks(hostile: Hostile, text: str) -> list[str]:
    """Name every canary and foreign secret found in `text` (the hostile's own token is fine)."""
    found = hostile.canaries.found_in(text)
    return found + [n for n, v in hostile.secrets.items() if n != "HOSTILE_TOKEN" and v in text]


async def test_the_decoys_environ_is_unreadable_and_its_cmdline_holds_no_secret(
    hostile: Hostile,
) -> None:
    """runc: /proc/<decoy>/environ gives EACCES; its cmdline is readable but carries no secret.

    gVisor: the decoy runs in a container of its own, so none of its processes is visible at
    all (in Debian's runsc every process may read every other's environ in one sandbox).

    Fails when: both skills share a uid (checked by hand, runc: environ then reads
    DECOY_SECRET), or a secret is passed on a command line; under gVisor when the skills share
    one container (checked by hand: `containers=1` lets the hostile skill read the decoy's
    environ, secret included, although the uids differ).
    """
    decoy = await hostile.whoami("decoy")
    seen = await hostile.visible_pids_of(decoy["uid"])
    if hostile.isolation == "gvisor":
        assert seen == []
        return
    pid = decoy["pid"]
    assert pid in seen
    code = (
        f"emit([open_outcome('/proc/{pid}/environ'), open('/proc/{pid}/cmdline').read(),"
        f" open_outcome('/proc/{pid}/mem')])"
    )
    environ, cmdline, mem = await hostile.probe(code)
    assert environ == "EACCES"
    assert mem == "EACCES"
    assert "hostile_server.py" in cmdline
    assert leaks(hostile, cmdline) == []


async def test_the_skill_sees_its_own_secret_and_nothing_else_of_the_host(
    hostile: Hostile,
) -> None:
    """The hostile skill's environment is its HOSTILE_TOKEN plus the sandbox variables.

    Fails when: a canary is added to the container's or the exec's environment (checked by
    hand: AWS_SECRET_ACCESS_KEY set on the sandbox container reaches every exec).
    """
    environment = await hostile.probe("import os\nemit(dict(os.environ))")
    assert environment["HOSTILE_TOKEN"] == hostile.secrets["HOSTILE_TOKEN"]
    others = {name for name in environment if name != "HOSTILE_TOKEN"}
    assert {name for name in others if not SANDBOX_VARIABLES.match(name)} == set()
    assert leaks(hostile, json.dumps(environment)) == []


async def test_no_readable_process_environment_or_command_line_holds_a_canary(
    hostile: Hostile,
) -> None:
    """Every /proc/*/environ and cmdline the skill can read is free of canaries and secrets.

    Fails when: a canary or the decoy's secret is set on the container (checked by hand:
    every process then holds it) or on a command line; under gVisor, when both skills share
    one container (checked by hand: `containers=1`, the decoy's secret is read).
    """
    code = (
        "import glob\nseen = {}\n"
        "for path in glob.glob('/proc/[0-9]*/environ') + glob.glob('/proc/[0-9]*/cmdline'):\n"
        "    try: seen[path] = open(path, 'rb').read().decode('latin-1')\n"
        "    except OSError as exc: seen[path] = outcome_of(exc)\n"
        "emit(seen)"
    )
    seen = await hostile.probe(code)
    readable = [path for path, text in seen.items() if text not in ("EACCES", "ENOENT")]
    assert any(path.endswith("/environ") for path in readable)
    assert {
        path: leaks(hostile, seen[path]) for path in readable if leaks(hostile, seen[path])
    } == {}


async def test_no_file_in_the_sandbox_holds_a_canary_or_the_decoys_secret(
    hostile: Hostile,
) -> None:
    """A walk of every readable file (outside /proc, /sys, /dev) finds no canary or secret.

    Fails when: a secret is written to a file the sandbox can read (e.g. an env file mounted
    or copied into /expert or the workspace; checked by hand: without the covers of the env
    files, their canaries are found under /expert).
    """
    needles = [
        *hostile.canaries.values.values(),
        hostile.secrets["DECOY_SECRET"],
        *hostile.env_canaries.values(),
    ]
    code = (
        f"import os\nneedles = [n.encode() for n in {needles!r}]\nhits, scanned = [], 0\n"
        "for root, dirs, files in os.walk('/'):\n"
        f"    if root in {SCAN_SKIP!r}: dirs.clear(); continue\n"
        "    for name in files:\n"
        "        path = os.path.join(root, name)\n"
        "        try:\n"
        f"            if os.path.getsize(path) > {SCAN_MAX_BYTES}: continue\n"
        "            data = open(path, 'rb').read()\n"
        "        except OSError: continue\n"
        "        scanned += 1\n"
        "        hits += [path for n in needles if n in data]\n"
        "emit({'hits': hits, 'scanned': scanned})"
    )
    result = await hostile.probe(code)
    assert result["scanned"] > 1000
    assert result["hits"] == []


async def test_docker_inspect_of_every_object_of_the_run_holds_no_value(
    hostile: Hostile,
) -> None:
    """No container (the workspace layer's too), image, exec or network holds a canary or secret.

    Fails when: a secret is set on the container rather than per exec (checked by hand:
    `environment=` with a canary on the sandbox container), or a value goes into argv.
    """
    api = docker.from_env().api
    containers = hostile.containers()
    roles = {c.labels["perstack-sandbox.role"] for c in containers}
    assert roles == {"sandbox", "proxy", "workspace"}
    texts = {}
    for container in containers:
        attrs = api.inspect_container(container.id)
        texts[f"container {container.name}"] = json.dumps(attrs)
        image = docker.from_env().images.get(attrs["Image"])
        texts[f"image of {container.name}"] = json.dumps([image.attrs, image.history()])
        for exec_id in attrs.get("ExecIDs") or []:
            texts[f"exec {exec_id[:12]}"] = json.dumps(api.exec_inspect(exec_id))
        for network in attrs["NetworkSettings"]["Networks"].values():
            texts[f"network {network['NetworkID'][:12]}"] = json.dumps(
                api.inspect_network(network["NetworkID"])
            )
    assert any(name.startswith("exec ") for name in texts)
    every_value = [*hostile.canaries.values.values(), *hostile.secrets.values()]
    assert {name: [v for v in every_value if v in text] for name, text in texts.items()} == {
        name: [] for name in texts
    }
    for container in containers:
        env = "\n".join(api.inspect_container(container.id)["Config"]["Env"] or [])
        assert hostile.canaries.found_in(env) == []
        assert not [name for name in hostile.canaries.values if name in env]


async def test_no_container_of_the_run_holds_a_skills_proxy_token(hostile: Hostile) -> None:
    """The hostile skill's proxy token is in its own environment, and in no container's config.

    The tokens reach the proxy over its control channel (decision 51), so `docker inspect` of
    every container of the run (and of their execs and networks) shows none of them.

    Fails when: the tokens go in the proxy's environment again (seen failing on the old path,
    runc, before the grant was used for every run: the proxy's PERSTACK_PROXY_POLICY held it).
    """
    proxy_url = await hostile.probe("import os\nemit(os.environ['HTTPS_PROXY'])")
    token = urlsplit(proxy_url).password
    assert token, proxy_url  # the skill holds its own credential
    api = docker.from_env().api
    found = []
    for container in hostile.containers():
        attrs = api.inspect_container(container.id)
        texts = [json.dumps(attrs)]
        texts += [json.dumps(api.exec_inspect(e)) for e in attrs.get("ExecIDs") or []]
        texts += [
            json.dumps(api.inspect_network(n["NetworkID"]))
            for n in attrs["NetworkSettings"]["Networks"].values()
        ]
        found += [container.name for text in texts if token in text]
    assert found == []


async def test_the_run_state_files_hold_names_never_values(hostile: Hostile) -> None:
    """The run's audit, logs, policy and meta files contain no secret or canary value.

    Fails when: the gateway logs argument values (checked by hand: `argument_shape` returning
    the value puts the canary sent below into skills.log and tools.jsonl), or the launch logs
    the skills' environment.
    """
    canary = hostile.canaries.values["AWS_SECRET_ACCESS_KEY"]
    await hostile.probe(f"# an argument that carries a canary: {canary}\nemit(1)")
    every_value = [*hostile.canaries.values.values(), *hostile.secrets.values()]
    for path in hostile.run.path.iterdir():
        text = path.read_text(encoding="utf-8", errors="replace")
        assert [v for v in every_value if v in text] == [], path.name
