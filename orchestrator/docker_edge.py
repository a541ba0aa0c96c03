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
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import docker
import docker.errors
import requests.exceptions

from perstack_sandbox.errors import EngineError
from perstack_sandbox.procs import is_process_alive, process_start_ticks

if TYPE_CHECKING:
    from collections.abc import Iterator

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

FRAME_HEADER_BYTES: Final = 8  # stream type, three zero bytes, big-endian payload length
STDERR_STREAM: Final = 2
API_TIMEOUT_S: Final = 120  # one engine call; image builds stream and are not bound by it
# Refusals that may pass by themselves: a request timeout, a conflict (a removal already under
# way, an object in use) and too many requests; every server error is one too (the daemon's own
# deadlines: "get state ... context deadline exceeded" under a storm of removals).
TRANSIENT_STATUSES: Final = frozenset({408, 409, 429})
HTTP_FORBIDDEN: Final = 403  # also what the engine answers to removing a network still in use
HTTP_SERVER_ERROR: Final = 500
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


def is_transient(error: BaseException) -> bool:
    """Tell whether an engine error may pass by itself, so repeating the call is worth it.

    True when the engine was unreachable or timed out (a transport error, or the daemon's own
    deadline as a server error) or busy (a conflict, a network that still has endpoints);
    False for any other refusal (a bad request, a denial by an authorization plugin) and for
    an error that did not come from the engine: repeating those gets the same answer.
    """
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, docker.errors.APIError) and cause.status_code is not None:
            status = cause.status_code
            return (
                status >= HTTP_SERVER_ERROR
                or status in TRANSIENT_STATUSES
                or (status == HTTP_FORBIDDEN and "active endpoints" in _explain(cause))
            )
        if isinstance(cause, requests.exceptions.RequestException | OSError):
            return True  # OSError: ConnectionError, TimeoutError, no socket at all
        cause = cause.__cause__
    return False


def is_unreachable(error: BaseException) -> bool:
    """Tell whether `error` says no engine answers at all (refused, reset, no socket).

    A subset of `is_transient`: a stalled engine times out or answers 5xx, while a stopped
    or lost one refuses the connection. An owner waits through a stall but not for a stopped
    engine: its reaper, which outlives it, keeps trying (decision 66).
    """
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, requests.exceptions.Timeout | TimeoutError):
            return False
        if isinstance(cause, requests.exceptions.ConnectionError | ConnectionError):
            return True
        if isinstance(cause, FileNotFoundError):
            return True  # the engine's socket is gone
        cause = cause.__cause__ or cause.__context__
    return False


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


def split_frames(buffer: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split an attach stream (no TTY) into its whole frames and the incomplete rest.

    Each frame is (stream type: 1 stdout, 2 stderr; payload).
    """
    frames = []
    while len(buffer) >= FRAME_HEADER_BYTES:
        size = int.from_bytes(buffer[4:FRAME_HEADER_BYTES], "big")
        if len(buffer) < FRAME_HEADER_BYTES + size:
            break
        frames.append((buffer[0], buffer[FRAME_HEADER_BYTES : FRAME_HEADER_BYTES + size]))
        buffer = buffer[FRAME_HEADER_BYTES + size :]
    return frames, buffer
