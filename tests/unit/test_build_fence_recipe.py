"""The fenced build's pure parts: the recipe drops root, and registry hosts are derived."""

from __future__ import annotations

import json

import httpx2
import pytest

from perstack_sandbox import images
from perstack_sandbox.engine import _fence
from perstack_sandbox.errors import EngineError, ImageBuildError
from perstack_sandbox.images import _recipe, _registries
from perstack_sandbox.plan import PackageSpec

NPM = PackageSpec(manager="npm", name="@scope/srv", version_spec="^1.2", slug="srv-1")
PYPI = PackageSpec(manager="pypi", name="Tool_X", version_spec="", slug="tool")
# Stand-in registries: reserved example names, answered by a mock transport (nothing is sent).
INDEX = "https://index.example.test/simple"
REGISTRY = "https://npm.example.test/"


def _users(lines: list[str]) -> list[tuple[str, str]]:
    """Pair each RUN/COPY line with the USER in force for it."""
    user, paired = "root", []
    for line in lines:
        if line.startswith("USER "):
            user = line.removeprefix("USER ")
        elif line.startswith(("RUN ", "COPY ")):
            paired.append((user, line))
    return paired


def test_each_package_installs_as_its_own_uid_and_only_folder_making_runs_as_root():
    """Root only makes folders; package i installs as uid 10900+i; our finalize as 10999."""
    lines = images.expert_dockerfile("base:1", (NPM, PYPI)).splitlines()
    steps = _users(lines)
    assert [line for user, line in steps if user == "root"] == [steps[0][1]]
    assert steps[0][1].startswith("RUN mkdir -p ")
    assert "npm install" not in steps[0][1]
    installs = [(u, line) for u, line in steps if "npm install" in line or "uv tool" in line]
    assert [u for u, _ in installs] == [
        f"{_recipe.package_uid(i)}:{_recipe.package_uid(i)}" for i in (0, 1)
    ]
    build = f"{_recipe.BUILD_UID}:{_recipe.BUILD_UID}"
    assert all(u == build for u, line in steps if "finalize" in line)
    assert lines[-1] == "USER 10000"


def test_root_gives_each_package_exactly_its_own_folders_before_any_install():
    """The folder-making step hands npm and uv folders to the package that fills them."""
    first_run = next(
        line
        for line in images.expert_dockerfile("b", (NPM, PYPI)).splitlines()
        if line.startswith("RUN ")
    )
    npm_uid, uv_uid = _recipe.package_uid(0), _recipe.package_uid(1)
    assert f"install -d -o {npm_uid} -g {npm_uid} -m 755 /opt/perstack/npm/srv-1" in first_run
    assert (
        f"install -d -o {uv_uid} -g {uv_uid} -m 755 /opt/perstack/uv/tools/tool"
        " /opt/perstack/uv/links/tool" in first_run
    )
    build = _recipe.BUILD_UID
    assert f"install -d -o {build} -g {build} -m 755 /opt/perstack/entry" in first_run


def test_each_install_gets_a_fresh_home_and_finalize_runs_isolated():
    """HOME/TMPDIR come from mktemp per step; finalize runs with python3 -I from entry/."""
    text = images.expert_dockerfile("b", (NPM, PYPI))
    assert text.count('HOME="$(mktemp -d)" && export HOME TMPDIR="$HOME"') == 2
    assert f"RUN python3 -I {_recipe.FINALIZE_DIR}/finalize.py" in text


def test_too_many_packages_is_a_build_error():
    """Package uids stop below the build uid: one more package is refused."""
    with pytest.raises(ImageBuildError):
        _recipe.package_uid(_recipe.BUILD_UID - _recipe.PACKAGE_UID_BASE)


def test_proxy_settings_are_build_arguments_and_never_image_env():
    """Each proxy variable is declared as ARG (a build argument) and never as ENV."""
    text = images.expert_dockerfile("b", (NPM,))
    for name in _recipe.PROXY_ARGS:
        assert f"\nARG {name}=\n" in text
    assert "\nENV " not in text


def test_the_fence_hands_its_proxy_by_address_and_keeps_loopback_direct():
    """Proxy arguments name the fence's proxy URL; NO_PROXY covers loopback only."""
    fence = _fence.Fence("build-x", "net", "http://172.30.0.2:3128", _fence.builds_dir())
    args = fence.proxy_args()
    assert set(args) == set(_recipe.PROXY_ARGS)
    assert args["HTTPS_PROXY"] == args["http_proxy"] == "http://172.30.0.2:3128"
    assert args["NO_PROXY"] == args["no_proxy"] == "localhost,127.0.0.1,::1"


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://Registry.Example.TEST/", "registry.example.test"),
        ("https://a.test:443/x", "a.test"),
    ],
)
def test_a_registry_url_gives_its_canonical_host(url, host):
    """An https URL on the default port yields its canonical host name."""
    assert _registries.https_host(url) == host


@pytest.mark.parametrize(
    "url",
    ["http://plain.test/", "https://other-port.test:8443/", "https://10.0.0.1/", "file:///x"],
)
def test_a_registry_the_proxy_cannot_tunnel_is_an_error(url):
    """Plain http, another port, an IP literal or a local index cannot be allowed."""
    with pytest.raises(EngineError):
        _registries.https_host(url)


def _answers(request: httpx2.Request) -> httpx2.Response:
    if request.url.host == "npm.example.test":
        assert request.url.raw_path == b"/@scope%2Fsrv"
        tarball = "https://tarballs.example.test/srv-1.2.0.tgz"
        body = {"versions": {"1.2.0": {"dist": {"tarball": tarball}}}}
        return httpx2.Response(200, json=body)
    assert request.url.path == "/simple/tool-x/"
    files = [{"url": "https://files.example.test/t/tool_x-1.whl"}, {"url": "../../p/t.tar.gz"}]
    return httpx2.Response(
        200,
        content=json.dumps({"files": files}),
        headers={"content-type": _registries.PYPI_SIMPLE_JSON},
    )


def test_file_hosts_come_from_the_registries_answers():
    """Tarball and file hosts are read from the packument and the index's project page."""
    with httpx2.Client(transport=httpx2.MockTransport(_answers)) as http:
        tarballs = _registries._npm_tarballs(http, REGISTRY, "@scope/srv")
        files = _registries._pypi_files(http, INDEX, "Tool_X")
    assert {_registries.https_host(url) for url in tarballs} == {"tarballs.example.test"}
    assert {_registries.https_host(url) for url in files} == {
        "index.example.test",
        "files.example.test",
    }


def test_an_html_project_page_yields_its_link_hosts():
    """A simple index that answers HTML gives the hosts of its file links."""
    page = "<a href=\"https://cdn.example.test/a.whl#sha256=00\">a</a><a href='/b.tgz'>b</a>"

    def html(_request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, text=page, headers={"content-type": "text/html"})

    with httpx2.Client(transport=httpx2.MockTransport(html)) as http:
        files = _registries._pypi_files(http, INDEX, "x")
    assert {_registries.https_host(url) for url in files} == {
        "cdn.example.test",
        "index.example.test",
    }


def test_an_unknown_package_adds_no_host_and_leaves_the_error_to_its_install_step():
    """A 404 from the registry derives no file host (npm or uv then reports the package)."""

    def missing(_request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(404)

    with httpx2.Client(transport=httpx2.MockTransport(missing)) as http:
        assert not _registries._npm_tarballs(http, REGISTRY, "nope")
        assert not _registries._pypi_files(http, INDEX, "nope")


def test_a_registry_that_fails_otherwise_is_an_engine_error():
    """A registry answering 500 stops the build before it starts, naming the URL."""

    def broken(_request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(500)

    with (
        httpx2.Client(transport=httpx2.MockTransport(broken)) as http,
        pytest.raises(EngineError, match=r"npm\.example\.test"),
    ):
        _registries._npm_tarballs(http, REGISTRY, "srv")


def test_a_failed_build_names_each_refused_host_once(tmp_path):
    """Refusals in the build audit are named once each, sorted; allowed hosts are not named."""
    audit = tmp_path / "audit.jsonl"
    lines = [
        {"event": "decision", "decision": "deny", "host": "b.example.test"},
        {"event": "decision", "decision": "allow", "host": "registry.example.test"},
        {"event": "decision", "decision": "deny", "host": None, "rawHost": "169.254.169.254"},
        {"event": "decision", "decision": "deny", "host": "b.example.test"},
    ]
    audit.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n")
    said = _fence.describe_refusals(audit)
    assert said.startswith("the build's proxy refused 169.254.169.254, b.example.test (")
    assert "registry.example.test" not in said


def test_a_build_without_refusals_says_so(tmp_path):
    """An empty or missing audit gives 'refused nothing'."""
    assert "refused nothing" in _fence.describe_refusals(tmp_path / "missing.jsonl")


def test_a_build_id_keeps_only_the_reporting_step_out_of_the_build_cache() -> None:
    """The build id is an ARG right before the finalize step: installs above it stay cached."""
    lines = _recipe.expert_dockerfile("b", (NPM, PYPI), build_id="f00d").splitlines()
    finalize = next(i for i, line in enumerate(lines) if "finalize.py " in line and "RUN" in line)
    assert lines[finalize - 1] == "ARG PERSTACK_BUILD=f00d"
    assert sum("PERSTACK_BUILD" in line for line in lines) == 1
    assert "PERSTACK_BUILD" not in _recipe.expert_dockerfile("b", (NPM, PYPI))
