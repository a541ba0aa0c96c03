"""The skills' sessions of one run: an exec as its own uid per stdio skill, one per remote skill.

The MCP SDK comes with `perstack_sandbox.skills`, imported inside `build_sessions` only (a run
imports it while its sandbox starts, decision 49).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from perstack_sandbox.audit import NULL_SINK
from perstack_sandbox.plan import skill_environment

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractAsyncContextManager

    from perstack_sandbox import engine
    from perstack_sandbox.audit import AuditSink
    from perstack_sandbox.plan import SkillLaunch
    from perstack_sandbox.run._prepare import Prepared
    from perstack_sandbox.skills import SkillProcess, SkillSession

    ExecContext = AbstractAsyncContextManager[SkillProcess]


def skill_home(uid: int) -> str:
    """Return the private HOME of the skill running as `uid` (made mode 700 by the launcher)."""
    return f"/home/skill{uid}"


def build_sessions(
    prepared: Prepared,
    sandbox: engine.SandboxHandle,
    *,
    audit: AuditSink = NULL_SINK,
    accept_tool_changes: bool = False,
) -> list[SkillSession]:
    """One session per stdio skill (an exec as its own uid) and per remote skill.

    Every session reports its stderr and death to the run's `audit` sink. With a lock, each
    stdio skill's tools are pinned to the lock's (`ToolPin`).
    """
    from perstack_sandbox.skills import (  # noqa: PLC0415 - the MCP SDK only once a run starts
        RemoteSkillSession,
        SkillSession,
        SkillSpec,
        ToolPin,
    )

    timeout_s = prepared.plan.timeout_ms / 1000
    sessions: list[SkillSession] = []
    for index, launch in enumerate(prepared.plan.skills):
        env = skill_environment(
            prepared.secrets[launch.name],
            proxy_env=sandbox.proxy_env(launch.name),
            home=skill_home(sandbox.skill_uid(index)),
        )
        spec = SkillSpec(launch.name, launch.pick, launch.omit, launch.lazy_init, timeout_s)
        locked = prepared.lock.tools(launch.name) if prepared.lock is not None else None
        pin = None
        if locked is not None:
            pin = ToolPin(locked, accept_changes=accept_tool_changes, audit=audit)
        factory = _exec_factory(sandbox, launch, index, env)
        sessions.append(SkillSession(spec, factory, audit=audit, pin=pin))
    for sse in prepared.plan.sse_skills:
        spec = SkillSpec(sse.name, sse.pick, sse.omit, lazy_init=False, timeout_s=timeout_s)
        proxy_url = sandbox.host_proxy_url_for(sse.name)
        sessions.append(RemoteSkillSession(spec, sse.endpoint, proxy_url=proxy_url, audit=audit))
    return sessions


def _exec_factory(
    sandbox: engine.SandboxHandle, launch: SkillLaunch, index: int, env: dict[str, str]
) -> Callable[[], ExecContext]:
    def factory() -> ExecContext:
        return sandbox.exec_stdio(
            launch.argv, env=env, user=sandbox.skill_uid(index), workdir=launch.workdir
        )

    return factory
