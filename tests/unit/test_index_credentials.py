"""A package index URL with credentials never reaches an image build: it is refused (exit 2)."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest

from perstack_sandbox import images
from perstack_sandbox.config import parse_config
from perstack_sandbox.engine import _fence
from perstack_sandbox.errors import InputError, UsageError
from perstack_sandbox.images import _build
from perstack_sandbox.plan import plan

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from perstack_sandbox.plan import SandboxPlan

TOKEN = "s3cr3t-index-token"  # noqa: S105 - a stand-in secret the tests look for
# Stand-in registries: reserved example names, never contacted.
WITH_CREDENTIALS = f"https://ci-user:{TOKEN}@index.example.test/simple"
WITH_TOKEN_ONLY = f"https://{TOKEN}@index.example.test/simple"
WITH_TOKEN_QUERY = f"https://index.example.test/simple/?token={TOKEN}"
CLEAN = "https://index.example.test/simple"
SKILLS = """
[experts."e"]
instruction = "t"
[experts."e".skills."py"]
type = "mcpStdioSkill"
command = "uvx"
args = ["some-tool"]
[experts."e".skills."js"]
type = "mcpStdioSkill"
command = "npx"
args = ["-y", "some-server"]
"""


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Forget the host's index settings, before and after: they are read once per process."""
    for name in _build.PYTHON_INDEX_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    _build.python_index_url.cache_clear()
    _build.npm_registry.cache_clear()
    yield
    _build.python_index_url.cache_clear()
    _build.npm_registry.cache_clear()


@pytest.fixture
def recorded_builds(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """Record the build arguments of every fenced build instead of running it."""
    recorded: list[dict[str, str]] = []

    def fake_build(_context: Path, **kwargs: object) -> tuple[str, Path]:
        recorded.append(dict(kwargs["buildargs"]))  # type: ignore[call-overload]
        return "sha256:built", _context / "audit.jsonl"

    monkeypatch.setattr(_fence, "build_fenced", fake_build)
    monkeypatch.setattr(images, "build_hosts", lambda _packages: [])
    return recorded


def _plan(tmp_path: Path) -> SandboxPlan:
    config, _ = parse_config(SKILLS, config_dir=str(tmp_path))
    return plan(config, "e")


def _fake_npm(monkeypatch: pytest.MonkeyPatch, registry: str) -> None:
    """Make the host's npm answer `registry` to `npm config get registry`."""
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: "npm" if name == "npm" else real_which(name))
    monkeypatch.setattr(_build, "_run_host_tool", lambda _argv, **_: f"{registry}\n")


@pytest.mark.parametrize("variable", _build.PYTHON_INDEX_VARIABLES)
@pytest.mark.parametrize("url", [WITH_CREDENTIALS, WITH_TOKEN_ONLY, WITH_TOKEN_QUERY])
def test_an_index_variable_with_credentials_is_refused_before_any_build(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    recorded_builds: list[dict[str, str]],
    variable: str,
    url: str,
) -> None:
    """A credentialed index is refused as bad input naming its variable; no build starts.

    Fails when: `_without_credentials` returns the URL as it is (seen by hand, 2026-11-30:
    pytest said DID NOT RAISE: the build went on with the URL as a build argument); the
    query-string case failed the same way before query strings were refused.
    """
    monkeypatch.setenv(variable, url)
    _fake_npm(monkeypatch, "https://npm.example.test/")
    said: list[str] = []
    with pytest.raises(UsageError) as caught:
        _fence.build_expert(tmp_path, "expert-e", _plan(tmp_path), said.append)
    assert isinstance(caught.value, InputError)  # the CLI's exit code 2
    assert variable in str(caught.value)
    assert recorded_builds == []
    assert TOKEN not in str(caught.value) + "".join(said)


def test_a_pip_config_index_with_credentials_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pip config's global.index-url is checked like the variables, named, not shown.

    Fails when: the pip-config branch of `python_index_url` skips `_without_credentials` (seen
    by hand, 2026-11-30: the URL came back with its token).
    """
    monkeypatch.setattr(_build, "_run_host_tool", lambda _argv, **_: f"{WITH_CREDENTIALS}\n")
    with pytest.raises(UsageError, match=r"global\.index-url") as caught:
        images.python_index()
    assert TOKEN not in str(caught.value)


def test_an_npm_registry_with_credentials_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The npm registry setting with user:token@ is refused the same way, never echoed.

    Fails when: `npm_registry` returns the value unchecked (seen by hand, 2026-11-30: the
    credentialed registry was returned and became the NPM_REGISTRY build argument).
    """
    _fake_npm(monkeypatch, f"https://ci:{TOKEN}@npm.example.test/")
    with pytest.raises(UsageError, match="npm's registry setting") as caught:
        images.npm_registry()
    assert TOKEN not in str(caught.value)


def test_an_index_without_credentials_is_a_build_argument_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded_builds: list[dict[str, str]]
) -> None:
    """A plain index and registry go to the fenced build unchanged."""
    monkeypatch.setenv("UV_INDEX_URL", CLEAN)
    _fake_npm(monkeypatch, "https://npm.example.test/")
    _fence.build_expert(tmp_path, "expert-e", _plan(tmp_path), lambda _line: None)
    assert recorded_builds == [{"NPM_REGISTRY": "https://npm.example.test/", "UV_INDEX_URL": CLEAN}]
