"""Fixtures of the installed-wheel suite: it runs only when PERSTACK_SANDBOX_WHEEL_IT=1.

`make wheel-check` (`.ci/wheel-check.sh`) sets it after installing the wheel in a fresh venv
outside the checkout, and passes that venv and its folder on (`WHEEL_VENV_ENV`,
`WHEEL_WORK_ENV`), so the wheel is built and installed once. Asked for without them, the
suite builds and installs the wheel itself, once per session.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
from wheel_support import Installed, install_wheel, require_engine

if TYPE_CHECKING:
    from collections.abc import Iterator

IT_ENV = "PERSTACK_SANDBOX_WHEEL_IT"
WHEEL_VENV_ENV = "PERSTACK_SANDBOX_WHEEL_VENV"  # the venv the wheel is installed in
WHEEL_WORK_ENV = "PERSTACK_SANDBOX_WHEEL_WORK"  # its folder, outside the checkout

# Not collected unless asked for: `pytest tests` would build the wheel a second time, and
# `make test` runs this suite once, through `make wheel-check`.
collect_ignore_glob = [] if os.environ.get(IT_ENV) == "1" else ["test_*.py"]


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio."""
    return "asyncio"


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """Return the wheel's venv and a folder outside the checkout with the examples copied in."""
    require_engine()
    venv, work = os.environ.get(WHEEL_VENV_ENV), os.environ.get(WHEEL_WORK_ENV)
    if venv and work:
        yield Installed.at(venv, work)
        return
    with install_wheel(tmp_path_factory.mktemp("wheel")) as made:
        yield made
