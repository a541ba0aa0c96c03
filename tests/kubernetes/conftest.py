"""Fixtures of the real-cluster suite: it runs only when PERSTACK_SANDBOX_K8S_IT=1.

It needs a cluster that enforces NetworkPolicies (kind >= 0.24 with kindnet, or k3s), the
namespace that `render kubernetes` prints, and the images loaded into the cluster (README,
"Kubernetes backend"). Asked for (the variable set) and without a cluster, it fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from perstack_sandbox import state

IT_ENV = "PERSTACK_SANDBOX_K8S_IT"


# Not collected at all unless asked for: `make test` runs on machines with no cluster, and a
# suite that cannot run there is left out of it rather than shown as skipped.
collect_ignore_glob = [] if os.environ.get(IT_ENV) == "1" else ["test_*.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test here `kubernetes`."""
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.kubernetes)


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio (the Kubernetes client's loop)."""
    return "asyncio"


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Return a private state directory for the runs of one test."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path / "state"))
    return tmp_path / "state"
