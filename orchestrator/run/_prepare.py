"""A run's preparation: everything decided, and every input refused, before Docker is touched.

The order is the contract: every input error (config, unknown expert, missing variable, bad
workspace, an Expert's folder the skills cannot read, a stale lock, an isolation this host
lacks) is raised here, before any image is built or any container exists.
"""

from __future__ import annotations

import contextlib
import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from perstack_sandbox import engine, lock, state
from perstack_sandbox.config import PerstackConfig, load_config
from perstack_sandbox.errors import LockError, UsageError
from perstack_sandbox.isolation import check_isolation
from perstack_sandbox.plan import Secret, check_expert_folder, resolve_secrets, seal_secrets
from perstack_sandbox.plan import plan as make_plan
from perstack_sandbox_proxy.hosts import HostRejected, canonicalise_host

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from perstack_sandbox.lock import ExpertLock
    from perstack_sandbox.plan import Limits, SandboxPlan, SealedSecrets, SkillSecrets
    from perstack_sandbox.run._options import ConfigSource, RunOptions


@dataclass(frozen=True, slots=True)
class Prepared:
    """Everything decided before Docker is touched."""

    plan: SandboxPlan
    secrets: dict[str, SkillSecrets]
    # With sealing: `secrets` holds the placeholders, this the real values (decision 37).
    sealed: SealedSecrets | None = None
    lock: ExpertLock | None = None  # the expert's entry of perstack-sandbox.lock, if any


def prepare_run(  # noqa: PLR0913 - the config and expert, then one keyword per input
    config: PerstackConfig,
    expert: str,
    *,
    secrets: Mapping[str, str | Secret],
    workspace: Path | None = None,
    limits: Limits | None = None,
    env_paths: Sequence[str | os.PathLike[str]] = (),
) -> Prepared:
    """Plan `expert` of `config` and pick each skill's secrets from `secrets`; no Docker yet.

    `env_paths` names the env files `secrets` was read from besides the default ones
    (`--env-path`): they are hidden under /expert too. The Expert's folder is walked here, so a
    folder the skills cannot read is refused before anything is built.

    Raises:
        UnknownExpertError: no such expert.
        MissingEnvError: a requiredEnv variable is not in `secrets` (all of them named).
        UsageError: the Expert's folder is not absolute, or the skills cannot read it (see
            `plan.check_expert_folder`); the workspace is refused (see `check_workspace`).

    """
    sandbox_plan = make_plan(config, expert, tuple(os.fspath(path) for path in env_paths))
    if len(sandbox_plan.skills) > engine.SKILL_UID_COUNT:
        raise UsageError(
            f"expert {expert!r} has {len(sandbox_plan.skills)} stdio skills; a sandbox runs at "
            f"most {engine.SKILL_UID_COUNT} (one uid each)"
        )
    if limits is not None:
        sandbox_plan = sandbox_plan.model_copy(update={"limits": limits})
    if not Path(sandbox_plan.config_dir).is_absolute():
        raise UsageError(
            f"the Expert's folder {sandbox_plan.config_dir!r} is not absolute: load the config "
            "with load_config(path), or parse_config(text, config_dir=<absolute folder>)"
        )
    check_workspace(workspace, Path(sandbox_plan.config_dir))
    values = {name: v if isinstance(v, Secret) else Secret(v) for name, v in secrets.items()}
    resolved = resolve_secrets(sandbox_plan, values, host_env={})
    check_expert_folder(sandbox_plan)  # the engine checks it again when the sandbox starts
    return Prepared(plan=sandbox_plan, secrets=resolved, lock=_current_lock(sandbox_plan))


def _current_lock(sandbox_plan: SandboxPlan) -> ExpertLock | None:
    """Return the expert's lock entry; a lock that no longer matches perstack.toml is refused.

    Raises:
        LockError: the lock is unreadable, or stale for this expert.

    """
    found = lock.read_lock(lock.lock_path(sandbox_plan.config_dir))
    entry = lock.expert_lock(found, sandbox_plan.expert)
    if entry is None:
        return None
    stale = lock.stale_reasons(found, sandbox_plan)
    if stale:
        raise LockError(
            f"{lock.LOCK_NAME} is stale for expert {sandbox_plan.expert!r}: "
            + "; ".join(stale)
            + f" (run `perstack-sandbox lock {sandbox_plan.expert} --update`)"
        )
    return entry


def check_workspace(workspace: Path | None, config_dir: Path) -> None:
    """Refuse a workspace that overlaps the Expert's folder or the state directory, or the home.

    The sandbox writes to its workspace; if that were the Expert's folder it could rewrite
    perstack.toml or plant `.env` files (or links) that the NEXT run would read on the host.
    Over the state directory it would reach every run's policy, logs and audit: the workspace
    layer acts as the owner, whom their modes do not stop (it covers a state directory inside
    the workspace too, but the trail must not be reachable by what it records). The user's
    home (or a folder above it) holds their keys, shell start-up files and the default state
    directory.

    Raises:
        UsageError: the workspace overlaps one of them, or is (or contains) the home folder.

    """
    if workspace is None:
        return
    space = workspace.resolve()
    if _overlaps(space, config_dir.resolve()):
        raise UsageError(
            f"--workspace {workspace} overlaps the Expert's folder {config_dir}: the sandbox "
            "could rewrite its own perstack.toml and env files; use a separate folder"
        )
    for home in _homes():
        if space == home or space in home.parents:
            raise UsageError(
                f"--workspace {workspace} is your home folder {home} or holds it: the sandbox "
                "could read and rewrite your keys, shell start-up files and settings; give it "
                "a folder of its own"
            )
    states = state.state_dir()
    if _overlaps(space, states.resolve()):
        raise UsageError(
            f"--workspace {workspace} overlaps the state directory {states}: the sandbox "
            "would reach the records of every run; use a separate folder (or move the state "
            f"with ${state.STATE_ENV})"
        )


def _overlaps(one: Path, other: Path) -> bool:
    return one == other or one in other.parents or other in one.parents


def _homes() -> set[Path]:
    """Return the invoking user's home, as $HOME and as the password database say."""
    homes = set()
    with contextlib.suppress(KeyError, RuntimeError):
        homes.add(Path.home().resolve())
    with contextlib.suppress(KeyError):
        homes.add(Path(pwd.getpwuid(os.getuid()).pw_dir).resolve())
    return homes


def prepare_for_run(
    config: ConfigSource,
    expert: str,
    secrets: Mapping[str, str | Secret],
    options: RunOptions,
    chosen_backend: Callable[[], engine.SandboxBackend],
) -> Prepared:
    """Prepare the run `open_run` was asked for, check its backend and isolation, seal it.

    `chosen_backend` is called once the input is checked: an unknown backend comes after.

    Raises:
        InputError: see `open_run`. IsolationError: gVisor is asked for and not set up.

    """
    isolation = check_isolation(options.isolation)
    if not isinstance(config, PerstackConfig):
        config, _warnings = load_config(Path(config))
    prepared = prepare_run(
        config,
        expert,
        secrets=secrets,
        workspace=options.workspace,
        limits=options.limits,
        env_paths=options.env_paths,
    )
    backend = chosen_backend()
    if backend.name == "kubernetes":
        from perstack_sandbox import kube  # noqa: PLC0415 - the Kubernetes client only when asked

        kube.check_plan(prepared.plan, options.workspace)
        if options.seal_secrets or options.pool is not None:
            raise UsageError("sealed secrets and warm pools run on Docker only, for now")
    else:
        # After the input checks, before any build: never a silent fallback to runc.
        engine.require_isolation(isolation)
    if options.seal_secrets:
        passthrough = [passthrough_host(host) for host in options.seal_passthrough]
        sealed = seal_secrets(prepared.secrets, passthrough)
        return Prepared(plan=prepared.plan, secrets=dict(sealed.placeholders), sealed=sealed)
    return prepared


def passthrough_host(text: str) -> str:
    """Return the canonical form of a `seal_passthrough` host.

    Raises:
        UsageError: not a host name.

    """
    try:
        return canonicalise_host(text)
    except HostRejected as exc:
        raise UsageError(f"seal passthrough host {text!r} is invalid: {exc}") from exc
