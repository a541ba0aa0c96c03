"""The Docker edge shared by `engine` and `images`: the client, labels, and error mapping.

Only `engine`, `images` and their private helpers import `docker`. Every docker-py error is
re-raised as an `EngineError` (or a subclass) by `docker_errors()`, so nothing above this layer
sees a dependency's exception.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import docker
import docker.errors
import requests.exceptions

from perstack_sandbox.errors import EngineError
from perstack_sandbox.procs import is_process_alive, process_start_ticks

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

LABEL_PREFIX: Final = "perstack-sandbox"
LABEL_MANAGED: Final = f"{LABEL_PREFIX}.managed"
LABEL_RUN: Final = f"{LABEL_PREFIX}.run"
LABEL_ROLE: Final = f"{LABEL_PREFIX}.role"
LABEL_EXPERT: Final = f"{LABEL_PREFIX}.expert"
LABEL_OWNER_PID: Final = f"{LABEL_PREFIX}.owner-pid"
LABEL_OWNER_START: Final = f"{LABEL_PREFIX}.owner-start"
LABEL_OWNER_HOST: Final = f"{LABEL_PREFIX}.owner-host"
LABEL_OWNER_USER: Final = f"{LABEL_PREFIX}.owner-user"
LABEL_CREATED: Final = f"{LABEL_PREFIX}.created"
LABEL_KIND: Final = f"{LABEL_PREFIX}.kind"
LABEL_RECIPE: Final = f"{LABEL_PREFIX}.recipe"
LABEL_PACKAGES: Final = f"{LABEL_PREFIX}.packages"
LABEL_BASE: Final = f"{LABEL_PREFIX}.base"
MANAGED_FILTER: Final = {"label": f"{LABEL_MANAGED}=1"}

API_TIMEOUT_S: Final = 120  # one engine call; image builds stream and are not bound by it
ENGINE_HINT: Final = (
    "start one with `make engine` (or `bash images/ensure-engine.sh`), or set DOCKER_HOST"
)


@contextlib.contextmanager
def docker_errors(action: str) -> Iterator[None]:
    """Re-raise docker-py and transport errors as `EngineError`, naming what we were doing.

    Raises:
        EngineError: the engine refused `action` or could not be reached.

    """
    try:
        yield
    except docker.errors.DockerException as exc:
        raise EngineError(f"{action}: {_explain(exc)}") from exc
    except (requests.exceptions.RequestException, ConnectionError) as exc:
        raise EngineError(
            f"{action}: the Docker engine is unreachable ({exc}); {ENGINE_HINT}"
        ) from exc


def _explain(exc: docker.errors.DockerException) -> str:
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return str(exc)


@functools.cache
def client() -> docker.DockerClient:
    """Return the process-wide Docker client (from DOCKER_HOST or the default socket).

    Raises:
        EngineError: no engine answers.

    """
    with docker_errors("connecting to the Docker engine"):
        try:
            made = docker.from_env(timeout=API_TIMEOUT_S)
            made.api.ping()
        except docker.errors.DockerException as exc:
            raise EngineError(f"no Docker engine answers ({exc}); {ENGINE_HINT}") from exc
    return made


def owner_user() -> str:
    """Return the user name that owner labels carry (`down --all` takes down only its runs).

    `getpass.getuser()` reads LOGNAME/USER first, like `who am i` in scripts, then the uid's
    account. It tells users apart; it is no access control (Docker access is root access).
    """
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no variable and no passwd entry (a bare container)
        return f"uid-{os.getuid()}"


def owner_labels() -> dict[str, str]:
    """Return the labels that name this process (and its user) as the owner of an object."""
    pid = os.getpid()
    return {
        LABEL_MANAGED: "1",
        LABEL_OWNER_PID: str(pid),
        LABEL_OWNER_START: process_start_ticks(pid),
        LABEL_OWNER_HOST: socket.gethostname(),
        LABEL_OWNER_USER: owner_user(),
        LABEL_CREATED: datetime.now(UTC).isoformat(timespec="seconds"),
    }


def is_owner_alive(labels: dict[str, str]) -> bool:
    """Tell whether the process that owns an object still runs.

    Objects owned on another host are always treated as alive: we cannot see that host's
    processes, so we must never remove them.
    """
    if labels.get(LABEL_OWNER_HOST) != socket.gethostname():
        return True
    try:
        pid = int(labels.get(LABEL_OWNER_PID, ""))
    except ValueError:
        return False
    return is_process_alive(pid, labels.get(LABEL_OWNER_START, ""))


def remove_labelled(
    filters: dict[str, Any], *, keep: Callable[[dict[str, str]], bool] | None = None
) -> list[str]:
    """Remove containers then networks matching `filters` (unless `keep(labels)`); name them.

    Containers go in parallel (each removal waits for its filesystem to be unmounted); the
    networks go after them, since a network in use cannot be removed.

    Raises:
        EngineError: the engine refused a removal or could not be reached.

    """
    api = client().api

    def is_kept(item: dict[str, Any]) -> bool:
        return keep is not None and keep(item.get("Labels") or {})

    def remove_container(container_id: str) -> None:
        with (
            docker_errors("removing a sandbox container"),
            contextlib.suppress(docker.errors.NotFound),
        ):
            api.remove_container(container_id, force=True, v=True)

    with docker_errors("listing sandbox objects"):
        containers = [c for c in api.containers(all=True, filters=filters) if not is_kept(c)]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(containers)))) as pool:
        list(pool.map(remove_container, [c["Id"] for c in containers]))
    removed = [f"container {c['Names'][0].lstrip('/')}" for c in containers]
    with docker_errors("removing sandbox networks"):
        for network in api.networks(filters=filters):
            if is_kept(network):
                continue
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_network(network["Id"])
            removed.append(f"network {network['Name']}")
    return removed
