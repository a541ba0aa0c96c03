"""The per-expert build is fenced: a hostile package's install script reaches nothing but the proxy.

The hostile package is a local npm tarball whose `install` script tries our listeners on the
host (the docker0 and egress-network gateway addresses), the same listeners and the metadata IP
through the build's proxy, a name lookup, and writes into the next package's folder (a benign
local "victim" package installed after it). Both are installed by the production recipe
(`images.expert_dockerfile`, one COPY added for the tarballs) through the production fenced
build (`_fence.build_fenced`), so the script runs exactly where a registry package's would.
"""

from __future__ import annotations

import contextlib
import json
import select
import shutil
import socket
import subprocess
from typing import TYPE_CHECKING, Any

import pytest

from perstack_sandbox import images, state
from perstack_sandbox.audit import summarise as summarise_audit
from perstack_sandbox.engine import _containers, _fence
from perstack_sandbox.errors import ImageBuildError
from perstack_sandbox.images import _recipe, _registries
from perstack_sandbox.plan import PackageSpec

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import docker

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("state_home")]

METADATA_IP = "169.254.169.254"  # only ever asked of our proxy, which refuses before dialling
HOSTILE, VICTIM = "perstack-itest-hostile", "perstack-itest-victim"
# Folders the hostile install must not write: the next package's, the entry links', parents.
PLANT_TARGETS = ("/opt/perstack/npm/victim", "/opt/perstack/entry", "/opt/perstack/npm")
HOST_NAME = "host.docker.internal"  # a name the proxy refuses before any lookup
PROBE_RESULT = "/tmp/perstack-probe.json"  # noqa: S108 - a path inside the build container
PROBE_JS = r"""
const fs = require('fs'), net = require('net'), dns = require('dns');
const t = JSON.parse(fs.readFileSync(__dirname + '/targets.json', 'utf8'));
const out = {ran: true, uid: process.getuid(), direct: {}, proxied: {}, lookup: null, writes: {}};
const TIMEOUT_MS = 4000;
function direct([host, port]) {
  return new Promise((done) => {
    const s = net.connect({host, port, timeout: TIMEOUT_MS});
    s.on('connect', () => { s.destroy(); done('connected'); });
    s.on('timeout', () => { s.destroy(); done('timeout'); });
    s.on('error', (e) => done(e.code || String(e)));
  });
}
function proxied(target) {
  const proxy = process.env.HTTPS_PROXY;
  if (!proxy) return Promise.resolve('no proxy variable');
  const url = new URL(proxy);
  return new Promise((done) => {
    const s = net.connect({host: url.hostname, port: Number(url.port), timeout: TIMEOUT_MS});
    let head = '';
    s.on('connect', () => s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`));
    s.on('data', (d) => {
      head += d;
      if (head.includes('\r\n')) { s.destroy(); done(head.split('\r\n')[0]); }
    });
    s.on('timeout', () => { s.destroy(); done('timeout'); });
    s.on('error', (e) => done(e.code || String(e)));
  });
}
function lookup(name) {
  return new Promise((done) => {
    const timer = setTimeout(() => done('timeout'), TIMEOUT_MS);
    dns.lookup(name, (e, address) => { clearTimeout(timer); done(e ? e.code : address); });
  });
}
(async () => {
  for (const target of t.direct) out.direct[target.join(':')] = await direct(target);
  for (const target of t.proxied) out.proxied[target] = await proxied(target);
  out.lookup = await lookup(t.lookup);
  for (const dir of t.writes) {
    try { fs.writeFileSync(dir + '/planted', 'x'); out.writes[dir] = 'written'; }
    catch (e) { out.writes[dir] = e.code || String(e); }
  }
  fs.writeFileSync(process.env.PROBE_RESULT, JSON.stringify(out));
  process.exit(0);
})();
"""


@contextlib.contextmanager
def listeners(addresses: list[str]) -> Iterator[list[socket.socket]]:
    """Listen on an ephemeral port of each address (connections queue in the kernel)."""
    sockets = []
    try:
        for address in addresses:
            server = socket.create_server((address, 0))
            server.setblocking(False)  # noqa: FBT003 - the socket API
            sockets.append(server)
        yield sockets
    finally:
        for server in sockets:
            server.close()


def has_pending_connection(server: socket.socket) -> bool:
    """Tell whether a client has connected (a listening socket is readable once one has)."""
    readable, _, _ = select.select([server], [], [], 0)
    return bool(readable)


def host_address(api: docker.APIClient, network: str) -> str:
    """Return the host's own IPv4 address on a Docker bridge network."""
    info = api.inspect_network(network)
    for config in info["IPAM"].get("Config") or []:
        if config.get("Gateway"):
            return str(config["Gateway"])
    bridge = (info.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
    ip = shutil.which("ip")
    assert ip is not None, "iproute2 names the bridge's address"
    out = subprocess.run(
        [ip, "-4", "-o", "addr", "show", "dev", bridge],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return out.split()[3].split("/")[0]


def local_package(folder: Path, name: str, files: dict[str, str], **scripts: str) -> Path:
    """Pack a local npm package `name` (one bin, `probe.js`) and return its tarball."""
    source = folder / name
    source.mkdir()
    manifest = {"name": name, "version": "1.0.0", "bin": {name: "probe.js"}, "scripts": scripts}
    (source / "package.json").write_text(json.dumps(manifest))
    for file, text in {"probe.js": "", **files}.items():
        (source / file).write_text(text)
    npm = shutil.which("npm")
    assert npm is not None, "the host's npm packs the local packages"
    subprocess.run(
        [npm, "pack", "--pack-destination", str(folder)], cwd=source, check=True, timeout=120
    )
    return folder / f"{name}-1.0.0.tgz"


def hostile_context(folder: Path, base: str, targets: dict[str, object]) -> Path:
    """Return a build context: the production recipe installing the hostile, then the victim."""
    hostile = local_package(
        folder,
        HOSTILE,
        {"probe.js": PROBE_JS, "targets.json": json.dumps(targets)},
        install="node probe.js",
    )
    victim = local_package(folder, VICTIM, {})
    packages = [
        PackageSpec(manager="npm", name=n, version_spec=f"file:/tmp/{t.name}", slug=s)
        for n, t, s in ((HOSTILE, hostile, "hostile"), (VICTIM, victim, "victim"))
    ]
    recipe = images.expert_dockerfile(base, packages).splitlines()
    first_install = next(i for i, line in enumerate(recipe) if "npm install" in line)
    recipe[first_install:first_install] = [
        f"COPY {hostile.name} {victim.name} /tmp/",
        f"ARG PROBE_RESULT={PROBE_RESULT}",
    ]
    recipe.insert(first_install + 3, f"RUN cat {PROBE_RESULT}")  # after the hostile install
    context = folder / "context"
    context.mkdir()
    (context / "Dockerfile").write_text("\n".join(recipe) + "\n")
    for tarball in (hostile, victim):
        shutil.copy2(tarball, context / tarball.name)
    images.copy_recipe("expert-finalize.py", context / "finalize.py")
    manifest = [package.model_dump(mode="json") for package in packages]
    (context / "manifest.json").write_text(json.dumps(manifest))
    return context


def probe_result(lines: list[str]) -> dict[str, Any]:
    """Return the probe's JSON report from the build's output."""
    found = [line for line in lines if line.startswith('{"ran":true')]
    assert found, "the install script did not run:\n" + "\n".join(lines[-40:])
    report = json.loads(found[-1])
    assert isinstance(report, dict)
    return report


def test_a_hostile_install_script_reaches_no_host_listener_and_no_metadata(
    tmp_path: Path, docker_api: docker.APIClient, base_images: tuple[str, str]
) -> None:
    """A package's install script in a build reaches nothing of ours, nor the next package.

    It runs as its own non-root uid; direct connections to the host's bridge addresses fail;
    the same listeners, a name and the metadata IP asked of the proxy are refused (and
    audited); no name resolves; the next package's folder and the entry links are not
    writable. Fails when (each checked by hand with a pytest plugin that patched the build):
    the fence is removed (`build_fenced` replaced by `_build.build_image` on the default
    bridge, no proxy arguments): both host listeners got the script's connection and the
    lookup answered; root is not dropped (the recipe's `USER 109..` lines removed): uid 0,
    every folder written; one uid for every package (`package_uid` always 10999): the
    victim's folder and the entry links were written.
    """
    base, _ = base_images
    egress = _containers.ensure_egress_network()
    addresses = [host_address(docker_api, "bridge"), host_address(docker_api, egress)]
    registry = _registries.npm_registry()
    with listeners(addresses) as servers:
        ports = [server.getsockname()[1] for server in servers]
        hosts = [f"{a}:{p}" for a, p in zip(addresses, ports, strict=True)]
        targets = {
            "direct": [[a, p] for a, p in zip(addresses, ports, strict=True)],
            "proxied": [*hosts, f"{METADATA_IP}:80", f"{METADATA_IP}:443", f"{HOST_NAME}:443"],
            "lookup": _registries.https_host(registry),
            "writes": PLANT_TARGETS,
        }
        context = hostile_context(tmp_path, base, targets)
        lines: list[str] = []
        tag = f"perstack-itest/hostile:{state.new_run_id()}"
        try:
            _, audit = _fence.build_fenced(
                context,
                tag=tag,
                expert="hostile",
                hosts=[_registries.https_host(registry)],
                buildargs={"NPM_REGISTRY": registry},
                progress=lines.append,
            )
        finally:
            with contextlib.suppress(Exception):
                docker_api.remove_image(tag)
        reached = [
            h for h, server in zip(hosts, servers, strict=True) if has_pending_connection(server)
        ]
    report = probe_result(lines)
    assert reached == []
    assert report["uid"] == _recipe.package_uid(0)
    assert set(report["writes"].values()) == {"EACCES"}, report
    assert "connected" not in report["direct"].values(), report
    assert all(not status.startswith("HTTP/1.1 200") for status in report["proxied"].values())
    assert report["lookup"] in {"EAI_AGAIN", "ENOTFOUND", "timeout"}, report
    decisions = [json.loads(line) for line in audit.read_text().splitlines() if line]
    refused = {d.get("rawHost") for d in decisions if d.get("decision") == "deny"}
    assert {METADATA_IP, HOST_NAME} <= refused
    assert set(addresses) <= refused
    summary = summarise_audit(audit.parent.name)  # what `audit build-...` shows
    assert (summary.kind, summary.expert, summary.status) == ("build", "hostile", "finished")
    assert summary.allowlist == {"build": [_registries.https_host(registry)]}
    assert any(METADATA_IP in host.host and host.refused for host in summary.hosts)


def test_a_failed_fenced_build_names_what_its_proxy_refused_and_leaves_nothing(
    tmp_path: Path, docker_api: docker.APIClient, base_images: tuple[str, str]
) -> None:
    """A step that fetches an unlisted host fails; the error names it; no object remains."""
    base, _ = base_images
    context = tmp_path / "context"
    context.mkdir()
    fetch = f"import urllib.request as u; u.urlopen('https://{HOST_NAME}/', timeout=20)"
    (context / "Dockerfile").write_text(
        "\n".join([*_recipe.build_prelude(base), f'RUN python3 -c "{fetch}"']) + "\n"
    )
    lines: list[str] = []
    with pytest.raises(ImageBuildError, match=f"proxy refused {HOST_NAME} ") as failed:
        _fence.build_fenced(
            context,
            tag="perstack-itest/failing:1",
            expert="failing",
            hosts=[],
            progress=lines.append,
        )
    assert "403" in str(failed.value)
    build_ids = [line.split()[2].rstrip(":") for line in lines if line.startswith("build fence ")]
    assert len(build_ids) == 1
    flt = {"label": f"perstack-sandbox.run={build_ids[0]}"}
    assert docker_api.containers(all=True, filters=flt) == []
    assert docker_api.networks(filters=flt) == []


def test_an_install_scripts_escape_sequences_reach_progress_and_error_defused(
    tmp_path: Path, base_images: tuple[str, str]
) -> None:
    """A failing install script's bidi override and escapes arrive escaped, never raw.

    npm prints a failed script's output (it shows ESC and BEL as `^[` and `^G` itself, but
    passes U+202E through), and the engine wraps it in colour codes: it reaches the progress
    lines and the ImageBuildError with no raw control or bidi character. Fails when: build
    output is not passed through `printable` (checked by hand with `_build.printable` a no-op:
    U+202E reached both raw).
    """
    base, _ = base_images
    registry = _registries.npm_registry()
    script = "process.stdout.write('\\x1b]0;PWNED\\x07\\x1b[2J\\u202eexe.txt\\n'); process.exit(3)"
    hostile = local_package(tmp_path, HOSTILE, {"probe.js": script}, install="node probe.js")
    spec = f"file:/tmp/{hostile.name}"
    package = PackageSpec(manager="npm", name=HOSTILE, version_spec=spec, slug="hostile")
    recipe = images.expert_dockerfile(base, [package]).splitlines()
    first_install = next(i for i, line in enumerate(recipe) if "npm install" in line)
    recipe.insert(first_install, f"COPY {hostile.name} /tmp/")
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text("\n".join(recipe) + "\n")
    shutil.copy2(hostile, context / hostile.name)
    lines: list[str] = []
    with pytest.raises(ImageBuildError) as failed:
        _fence.build_fenced(
            context,
            tag=f"perstack-itest/escapes:{state.new_run_id()}",
            expert="escapes",
            hosts=[_registries.https_host(registry)],
            buildargs={"NPM_REGISTRY": registry},
            progress=lines.append,
        )
    message = str(failed.value)
    shown = "\n".join([*lines, message])
    assert "npm error command sh -c node probe.js" in lines  # the engine's red is dropped
    assert "\\u202eexe.txt" in message
    assert "\\u202eexe.txt" in shown[: -len(message)]
    assert not [char for char in shown if char in "\x1b\x07\u202e"]
