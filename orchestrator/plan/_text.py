"""The plan as a human reviewer reads it: what runs, with which secrets, reaching where."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from perstack_sandbox.plan._plan import EXPERT_DIR

if TYPE_CHECKING:
    from perstack_sandbox.plan._plan import EgressRule, Mount, SandboxPlan, SkillLaunch, SseSkill


def plan_to_text(sandbox: SandboxPlan) -> str:
    """Render the plan for a human reviewer: what runs, with which secrets, reaching where."""
    lines = [f"expert {sandbox.expert}", f"  config folder  {sandbox.config_dir}"]
    lines += [f"  mount  {m.source} -> {m.target} ({_mode(m)})" for m in sandbox.mounts]
    lines += _hidden_text(sandbox)
    limits = sandbox.limits
    lines.append(
        f"  limits  memory {limits.memory_bytes // 1024**2} MiB, cpus {limits.cpus:g}, "
        f"pids {limits.pids}, generation timeout {sandbox.timeout_ms} ms"
    )
    for launch in sandbox.skills:
        lines += _launch_text(launch)
    for sse in sandbox.sse_skills:
        lines += [f"sse skill {sse.name}", f"  endpoint  {sse.endpoint}", *_filter(sse)]
    for tool in sandbox.interactive_tools:
        lines.append(f"interactive tool {tool.skill}/{tool.name}  {tool.description}".rstrip())
    lines.append("egress allowlist" + ("" if sandbox.egress else "  (empty: no egress at all)"))
    lines += [f"  {r.pattern}  <- {', '.join(r.sources)}{_risk(r)}" for r in sandbox.egress]
    return "\n".join(lines) + "\n"


def _launch_text(launch: SkillLaunch) -> list[str]:
    lines = [f"skill {launch.name} ({launch.kind})", f"  runs  {shlex.join(launch.argv)}"]
    lines.append(f"  in    {launch.workdir}" + ("  (started on first use)" * launch.lazy_init))
    if launch.package is not None:
        spec = launch.package.version_spec or "newest at build time"
        lines.append(f"  package  {launch.package.manager} {launch.package.name} ({spec})")
    lines.append(f"  env names  {', '.join(launch.env_names) or '(none)'}")
    lines += _filter(launch)
    lines.append(f"  may reach  {', '.join(launch.allowed_domains) or '(nothing)'}")
    return lines


def _filter(skill: SkillLaunch | SseSkill) -> list[str]:
    if skill.pick and skill.omit:  # pick, then omit (see `config._warnings`)
        return [f"  tools  only {', '.join(skill.pick)}, then not {', '.join(skill.omit)}"]
    if skill.pick:
        return [f"  tools  only {', '.join(skill.pick)}"]
    if skill.omit:
        return [f"  tools  all but {', '.join(skill.omit)}"]
    return []


def _hidden_text(sandbox: SandboxPlan) -> list[str]:
    if sandbox.expert_mount is None:
        return [f"  not mounted  {EXPERT_DIR} (no skill runs from it or names it)"]
    lines = [
        f"  hidden  {h.target}  ({h.origin} env file; covered by an empty file when present)"
        for h in sandbox.hidden
        if h.target is not None
    ]
    lines.append(
        f"  hidden  every other {sandbox.hidden_name_prefix}* file under {EXPERT_DIR}, and every "
        "other name in the folder of an env file (link target, hard link), found at start"
    )
    lines.append(f"  hidden  every .git under {EXPERT_DIR} (covered empty, found at start)")
    lines += [
        f"  env file outside the folder (not mounted)  {h.path}  ({h.origin})"
        for h in sandbox.hidden
        if h.target is None
    ]
    return lines


def _risk(rule: EgressRule) -> str:
    if rule.shared_suffix is None:
        return ""
    return f"  [shared suffix: every tenant of {rule.shared_suffix} is reachable]"


def _mode(mount: Mount) -> str:
    return "read-only" if mount.read_only else "read-write"
