"""What `open_run` was asked for, kept until `async with`; and the backend a choice names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from perstack_sandbox import engine
from perstack_sandbox.errors import UsageError

if TYPE_CHECKING:
    import os
    from collections.abc import Callable
    from pathlib import Path

    from perstack_sandbox.audit import AuditSink
    from perstack_sandbox.config import PerstackConfig
    from perstack_sandbox.gateway import Prompter
    from perstack_sandbox.isolation import Isolation
    from perstack_sandbox.plan import Limits
    from perstack_sandbox.pool import WarmPool

ConfigSource: TypeAlias = "PerstackConfig | str | os.PathLike[str]"
"""A parsed config (`parse_config`/`load_config`), or the path of a perstack.toml."""


def quiet(_line: str) -> None:
    """Drop build progress: the library never prints."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    """The choices of one `open_run`, besides the config, the expert and the secrets."""

    env_paths: tuple[str, ...]
    workspace: Path | None
    limits: Limits | None
    isolation: Isolation
    prefix_tools: bool
    prompter: Prompter | None
    audit: AuditSink | None
    on_progress: Callable[[str], None]
    seal_secrets: bool = False
    seal_passthrough: tuple[str, ...] = ()
    # Test-only openings of the proxy (the test suites set it; nothing else does).
    test_network: engine.TestNetwork | None = None
    accept_tool_changes: bool = False
    backend: engine.BackendName | engine.SandboxBackend = engine.DEFAULT_BACKEND

    pool: WarmPool | None = None
    pool_fallback: bool = False  # a run that does not fit `pool` starts cold (decision 77)


def sandbox_backend(choice: engine.BackendName | engine.SandboxBackend) -> engine.SandboxBackend:
    """Return the backend `choice` names (or `choice` itself, when it is one).

    Raises:
        UsageError: no backend has that name.

    """
    if not isinstance(choice, str):
        return choice
    if choice == "kubernetes":
        from perstack_sandbox import kube  # noqa: PLC0415 - the Kubernetes client only when asked

        return kube.KubernetesBackend()
    if choice != "docker":
        raise UsageError(f"unknown backend {choice!r}; choose one of {list(engine.BACKEND_NAMES)}")
    return engine.DOCKER_BACKEND
