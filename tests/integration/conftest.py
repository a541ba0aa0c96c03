"""Fixtures for tests against a real Docker engine.

Without an engine these tests skip, unless `CI` is set, where a missing engine fails them.
Other sessions may run sandboxes on the same engine at the same time: every assertion here is
about this test's own run id, never about global counts.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

import docker
import pytest
from engine_support import make_plan

from perstack_sandbox import engine, images, state

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from perstack_sandbox.plan import SandboxPlan

BUILD_DEADLINE_NOTE = "the first run builds images (minutes); later runs reuse them"


@functools.cache
def _engine_answers() -> bool:
    try:
        return bool(docker.from_env(timeout=10).ping())
    except docker.errors.DockerException:
        return False


@pytest.fixture(scope="session")
def docker_api() -> docker.APIClient:
    """Return a low-level client to check what the engine holds; skip or fail without one."""
    if not _engine_answers():
        if os.environ.get("CI"):
            pytest.fail("CI is set but no Docker engine answers")
        pytest.skip("no Docker engine (and CI is unset)")
    return docker.from_env(timeout=60).api


@pytest.fixture(scope="session")
def base_images(docker_api: docker.APIClient) -> tuple[str, str]:
    """Return the base and proxy images, built once when missing (`BUILD_DEADLINE_NOTE`)."""
    del docker_api
    return (
        images.ensure_base_image(progress=lambda _line: None),
        images.ensure_proxy_image(progress=lambda _line: None),
    )


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio (the orchestrator's backend)."""
    return "asyncio"


@pytest.fixture
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Give a test its own state directory (opt in with `usefixtures`)."""
    home = tmp_path / "state"
    monkeypatch.setenv(state.STATE_ENV, str(home))
    return home


@pytest.fixture
def plan_factory(tmp_path: Path) -> Callable[..., SandboxPlan]:
    """Make plans whose expert folder lives in this test's tmp dir."""
    return functools.partial(make_plan, tmp_path / "expert")


@pytest.fixture(scope="session")
def empty_expert_image(
    base_images: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> str:
    """Return the per-expert image of a plan without packages (built once, then cached)."""
    del base_images
    plan = make_plan(tmp_path_factory.mktemp("empty-expert"))
    return engine.ensure_expert_image(plan, progress=lambda _line: None)
