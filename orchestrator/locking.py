"""`perstack-sandbox lock`: write, refresh and check `perstack-sandbox.lock`.

Locking one expert is three steps, none of which runs package code on the host:

1. its packages are resolved inside a build fence (`engine.resolve_lock`);
2. the image is built from that resolution, as a locked build (so the lock is proven to
   install, every hash verified);
3. the skills are started in a sandbox on that image and each one's tools are listed; their
   definitions are pinned.

The file is only replaced once all three succeeded. `lock` locks the experts that are missing
or stale; `lock --update` re-resolves them all (newer versions, changed tools). An expert of a
version 1 lock keeps its packages under plain `lock`: steps 2 and 3 only, to pin the tools'
title and annotations that version 1 left out. `lock --check`
touches no engine: it says what is stale and, with `--outdated`, which locked package has a
newer version in its registry.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING

import anyio

from perstack_sandbox import engine, images, lock
from perstack_sandbox.config import load_config
from perstack_sandbox.launch import cli_run
from perstack_sandbox.plan import plan as make_plan
from perstack_sandbox.skills import pinned_tools

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from perstack_sandbox.config import PerstackConfig
    from perstack_sandbox.launch import LaunchOptions
    from perstack_sandbox.lock import JsonObject
    from perstack_sandbox.plan import SandboxPlan


def _experts(config: PerstackConfig, expert: str | None) -> list[str]:
    if expert is None:
        return sorted(config.experts)
    make_plan(config, expert)  # an unknown expert is refused before anything starts
    return [expert]


def lock_experts(options: LaunchOptions, experts: str | None, *, update: bool) -> list[str]:
    """Lock `experts` (one key, or every expert) of `options.config_path`; return report lines.

    Raises:
        InputError: bad config, unknown expert, missing secret (the skills are started).
        ImageBuildError: a resolution or the locked build failed; EngineError: Docker failed.
        SkillError: a skill failed to start.

    """
    config, _warnings = load_config(options.config_path)
    path = lock.lock_path(config.config_dir)
    current = lock.read_lock(path, upgrade=True) or lock.empty_lock()
    report: list[str] = []
    for expert in _experts(config, experts):
        sandbox_plan = make_plan(config, expert)
        if not update and not lock.stale_reasons(current, sandbox_plan):
            report.append(f"{expert}: up to date")
            continue
        options.progress(f"locking expert {expert}")
        old = lock.expert_lock(current, expert)
        entry = _entry_to_list(sandbox_plan, old, options, update=update)
        for skill, held in entry["skills"].items():  # keep the pins while the image builds
            pinned = old.tools(skill) if old is not None else None
            if pinned is not None:
                held["tools"] = pinned
        candidate = {**current, "experts": {**current["experts"], expert: entry}}
        tools = _listed_tools(path, candidate, current, options, expert)
        for skill, listed in tools.items():
            entry["skills"][skill]["tools"] = listed
        current = candidate
        lock.write_lock(path, current)
        report += _describe(expert, entry)
    text = lock.render_lock(current)
    report.append(f"{path}: {lock.lock_digest(text)}")
    return report


def _entry_to_list(
    sandbox_plan: SandboxPlan, old: lock.ExpertLock | None, options: LaunchOptions, *, update: bool
) -> JsonObject:
    """Return the entry whose tools are to be listed: resolved afresh, or an upgraded one.

    An entry upgraded from lock version 1 whose packages still match keeps them (no newer
    version slips in with the upgrade); only its tools are listed again (decision 74).
    """
    if (
        not update
        and old is not None
        and old.needs_relist
        and old.entry.get("source") == lock.plan_source(sandbox_plan)
    ):
        kept = json.loads(json.dumps(old.entry))  # a deep copy: the tools are replaced
        kept.pop(lock.RELIST_KEY)
        return dict(kept)
    return engine.resolve_lock(sandbox_plan, progress=options.progress)


def _listed_tools(
    path: Path, candidate: JsonObject, previous: JsonObject, options: LaunchOptions, expert: str
) -> dict[str, list[JsonObject]]:
    """Build from `candidate` (written for the build to read), start the skills, list tools.

    Changes against the previous pins are accepted (and shown as warnings: the review's
    diff); on any failure the previous lock is put back.
    """
    before = path.read_text(encoding="utf-8") if path.exists() else None
    lock.write_lock(path, candidate)
    try:
        return anyio.run(_list_all, options, expert)
    except BaseException:
        if before is None:
            with contextlib.suppress(OSError):
                path.unlink()
        else:
            lock.write_lock(path, previous)
        raise


async def _list_all(options: LaunchOptions, expert: str) -> dict[str, list[JsonObject]]:
    from dataclasses import replace  # noqa: PLC0415 - only here

    run = cli_run(replace(options, expert=expert, accept_tool_changes=True))
    async with run:
        # The most any client sees: a skill may offer more tools to a client that can answer
        # its questions, and a run refuses only tools that are new or changed (`ToolPin`).
        run.gateway.declare_every_capability()
        return {
            launch.name: pinned_tools(await run.gateway.skills[launch.name].listed_tools())
            for launch in run.plan.skills
        }


def _describe(expert: str, entry: JsonObject) -> list[str]:
    lines = [f"{expert}: locked against base image {entry['baseImage'][:19]}"]
    for skill, held in sorted(entry["skills"].items()):
        package = held.get("package")
        what = "local" if package is None else f"{package['manager']} {package['name']}"
        version = "" if package is None else f" {package['version']}"
        lines.append(f"  {skill}: {what}{version}, {len(held.get('tools') or [])} tools pinned")
    return lines


def check_lock(config_path: Path, experts: str | None, *, outdated: bool) -> list[str]:
    """Return why the lock is stale (or, with `outdated`, behind its registries): [] if fine.

    Raises:
        InputError: bad config, unknown expert, unreadable lock.
        EngineError: with `outdated`, a registry could not be read.

    """
    config, _warnings = load_config(config_path)
    found = lock.read_lock(lock.lock_path(config.config_dir))
    if found is None:
        return [f"no {lock.LOCK_NAME} next to {config_path}: run `perstack-sandbox lock`"]
    problems: list[str] = []
    for expert in _experts(config, experts):
        sandbox_plan = make_plan(config, expert)
        stale = lock.stale_reasons(found, sandbox_plan)
        problems += [f"{expert}: {reason}" for reason in stale]
        entry = lock.expert_lock(found, expert)
        if outdated and entry is not None and not stale:
            problems += _outdated(expert, entry, [launch.name for launch in sandbox_plan.skills])
    return problems


def _outdated(expert: str, entry: lock.ExpertLock, skills: Sequence[str]) -> list[str]:
    lines = []
    for skill in skills:
        package = entry.package(skill)
        if package is None:
            continue
        newest = images.latest_version(str(package["manager"]), str(package["name"]))
        if newest and newest != package["version"]:
            lines.append(
                f"{expert}: skill {skill!r}: {package['manager']} {package['name']} "
                f"{newest} is available (locked {package['version']})"
            )
    return lines
