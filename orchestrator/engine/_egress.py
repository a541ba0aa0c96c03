"""The shared egress network: one per engine, made once even when many processes start at once.

Every proxy joins it (inter-container traffic off, so proxies cannot reach each other on it).
The engine does not keep network names unique under concurrency (Docker 20.10: two creates of
one name at the same moment both succeed), and from then on every container start that joins
either of them fails as "ambiguous". So the first start takes an engine-wide lock before it
creates the network: a container name, which the engine does reserve atomically. The lock
container is never started; it carries its owner's labels, so a lock whose owner died is
broken by the next starter, removed by the owner's reaper and by `gc`.

Tests give the network another name (`$PERSTACK_SANDBOX_EGRESS_NETWORK`) to simulate a first
start without touching the one other sandboxes on the engine use.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import docker
import docker.errors

from perstack_sandbox.docker_edge import (
    LABEL_MANAGED,
    LABEL_ROLE,
    client,
    docker_errors,
    is_owner_alive,
    owner_labels,
)
from perstack_sandbox.engine import _reaper
from perstack_sandbox.errors import EngineError

if TYPE_CHECKING:
    from collections.abc import Iterator

EGRESS_NETWORK_ENV: Final = "PERSTACK_SANDBOX_EGRESS_NETWORK"
DEFAULT_EGRESS_NETWORK: Final = "perstack-sandbox-egress"
LOCK_ROLE: Final = "lock"
LOCK_TIMEOUT_S: Final = 60.0  # waiting for another process's create: one engine call, usually
LOCK_STALE_S: Final = 60.0  # a lock this old is broken even when its owner is on another host
POLL_INTERVAL_S: Final = 0.05


def egress_network_name() -> str:
    """Return the shared egress network's name (`$PERSTACK_SANDBOX_EGRESS_NETWORK` or default)."""
    return os.environ.get(EGRESS_NETWORK_ENV, "").strip() or DEFAULT_EGRESS_NETWORK


def ensure_egress_network(lock_image: str) -> str:
    """Return the shared egress network's id, creating it when missing (once per engine).

    Only proxies join it, and inter-container traffic on it is off, so proxies of different
    sandboxes cannot reach each other through it. `lock_image` is any local image: the lock
    container is created from it, never started.

    Raises:
        EngineError: the engine refused or could not be reached, or another process held the
            lock for longer than `LOCK_TIMEOUT_S`.

    """
    api = client().api
    name = egress_network_name()
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    # Threads of one process queue on a lock of their own, not on the engine's.
    with _threads_lock, docker_errors(f"creating the egress network {name}"):
        while True:
            found = the_network(api, name)
            if found is not None:
                return found
            with _engine_lock(api, name, lock_image) as is_held:
                if is_held:
                    return the_network(api, name) or _create(api, name)
            if time.monotonic() >= deadline:
                raise EngineError(
                    f"waited {LOCK_TIMEOUT_S:.0f} s for another process to create the egress "
                    f"network {name} (lock container {_lock_name(name)})"
                )
            time.sleep(POLL_INTERVAL_S)


_threads_lock = threading.Lock()


def the_network(api: docker.APIClient, name: str) -> str | None:
    """Return the id of our network called `name`, or None; remove unused duplicates.

    Duplicates come from versions without the lock. The oldest is kept; a newer one that a
    container still uses cannot be removed, and then no start can join either (an error).

    Raises:
        EngineError: duplicates are in use.

    """
    found = api.networks(names=[name], filters={"label": f"{LABEL_MANAGED}=1"})
    exact = sorted((n for n in found if n["Name"] == name), key=lambda n: (n["Created"], n["Id"]))
    if not exact:
        return None
    for duplicate in exact[1:]:
        with contextlib.suppress(docker.errors.NotFound):
            if api.inspect_network(duplicate["Id"]).get("Containers"):
                raise EngineError(
                    f"{len(exact)} networks are called {name} and a newer one is in use; stop "
                    f"the sandboxes on it (`perstack-sandbox ps`, then `down`), then start again"
                )
            api.remove_network(duplicate["Id"])
    return str(exact[0]["Id"])


def _create(api: docker.APIClient, name: str) -> str:
    created = api.create_network(
        name,
        driver="bridge",
        check_duplicate=True,
        options={"com.docker.network.bridge.enable_icc": "false"},
        labels={LABEL_MANAGED: "1", LABEL_ROLE: "egress"},
    )
    return str(created["Id"])


def _lock_name(name: str) -> str:
    return f"{name}-lock"


@contextlib.contextmanager
def _engine_lock(api: docker.APIClient, name: str, image: str) -> Iterator[bool]:
    """Try the lock once: yield whether it is held; release it on exit.

    When another holds it and its owner is gone (or it is older than `LOCK_STALE_S`), it is
    broken so that the next try can succeed.
    """
    _reaper.guard()  # the lock container is an object this process owns
    try:
        lock = api.create_container(
            image,
            name=_lock_name(name),
            labels={**owner_labels(), LABEL_ROLE: LOCK_ROLE},
            network_disabled=True,
            host_config=api.create_host_config(network_mode="none"),
        )
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # noqa: PLR2004 - conflict: the name is taken, by the holder
            raise
        _break_if_stale(api, _lock_name(name))
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(lock["Id"], force=True)


def _break_if_stale(api: docker.APIClient, lock_name: str) -> None:
    try:
        held = api.inspect_container(lock_name)
    except docker.errors.NotFound:
        return
    labels: dict[str, Any] = held["Config"].get("Labels") or {}
    # "2026-01-02T03:04:05.123456789Z": seconds are precise enough for an age.
    created = datetime.fromisoformat(held["Created"][:19]).replace(tzinfo=UTC)
    age = (datetime.now(UTC) - created).total_seconds()
    if not is_owner_alive(labels) or age > LOCK_STALE_S:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            api.remove_container(held["Id"], force=True)
