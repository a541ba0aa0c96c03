"""SandboxPlan: everything a run will do, decided before anything runs.

`plan(config, expert_key)` is a pure function. Its JSON form (`plan --json`) is the artefact a
security review reads and diffs, so it must be stable: same input, byte-identical output.

Container layout contract (shared with `images.py`, which builds it):
- npx skill packages are installed at build time with
  `npm install --prefix /opt/perstack/npm/<slug> <name>@<spec>`;
- uvx skill packages are installed at build time with `uv tool install` into
  `/opt/perstack/uv/tools/<slug>`, each as its own build uid (see `_recipe.py`);
- each package's executable (the one `npx <name>` / `uvx <name>` would run) is linked at
  `/opt/perstack/entry/<slug>`;
- `SkillLaunch.argv` is the exact command run in the container, which never touches a
  registry at run time: `/opt/perstack/entry/<slug> ARGS...` for npx and uvx skills.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from perstack_sandbox.config import DEFAULT_ENV_FILES
from perstack_sandbox.errors import UnknownExpertError
from perstack_sandbox_proxy.hosts import match_host, shared_suffix

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

    from perstack_sandbox.config import (
        Expert,
        InteractiveSkill,
        McpSseSkill,
        McpStdioSkill,
        PerstackConfig,
    )

NPM_ROOT = "/opt/perstack/npm"
ENTRY_DIR = "/opt/perstack/entry"
UV_TOOL_DIR = "/opt/perstack/uv/tools"
WORKSPACE_DIR = "/workspace"
EXPERT_DIR = "/expert"

DEFAULT_MEMORY_BYTES = 2 * 1024**3
DEFAULT_CPUS = 2.0
DEFAULT_PIDS = 256
DEFAULT_TIMEOUT_MS = 60_000
# Every file whose name starts with this is hidden from /expert, whether or not it is read.
HIDDEN_NAME_PREFIX = ".env"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PackageSpec(_Frozen):
    """A registry package preinstalled in the per-expert image."""

    manager: Literal["npm", "pypi"]
    name: str
    version_spec: str = Field(description="'' means the newest version at build time")
    slug: str = Field(description="filesystem-safe, unique per skill; names the install dir")


class SkillLaunch(_Frozen):
    """How one mcpStdioSkill starts inside the sandbox."""

    name: str = Field(description="the skill key from perstack.toml")
    kind: Literal["npx", "uvx", "local"]
    argv: tuple[str, ...] = Field(description="exact command run in the container")
    package: PackageSpec | None
    env_names: tuple[str, ...] = Field(description="requiredEnv NAMES, sorted; never values")
    pick: tuple[str, ...] = ()
    omit: tuple[str, ...] = ()
    lazy_init: bool = False
    workdir: str
    allowed_domains: tuple[str, ...] = ()


class SseSkill(_Frozen):
    """A remote MCP server reached from the host through the sandbox's proxy."""

    name: str
    endpoint: str
    host: str = Field(description="canonical host of the endpoint; part of the allowlist")
    pick: tuple[str, ...] = ()
    omit: tuple[str, ...] = ()


class InteractiveTool(_Frozen):
    """A tool whose answer comes from the host's user (MCP elicitation or a terminal prompt)."""

    skill: str
    name: str
    description: str = ""
    input_schema: dict[str, object]


class EgressRule(_Frozen):
    """One allowlist entry (exact host or `*.` wildcard) and the skills that asked for it."""

    pattern: str
    sources: tuple[str, ...]
    shared_suffix: str | None = Field(
        default=None,
        description="set when the wildcard covers a suffix anyone can register under (public "
        "suffix list, private section): every tenant's host under it is reachable",
    )


class Limits(_Frozen):
    """Resource limits of the sandbox container."""

    memory_bytes: int = DEFAULT_MEMORY_BYTES
    cpus: float = DEFAULT_CPUS
    pids: int = DEFAULT_PIDS


class Mount(_Frozen):
    """A host folder mounted into the sandbox."""

    source: str
    target: str
    read_only: bool


EnvOrigin = Literal["default", "envPath", "--env-path"]


class HiddenFile(_Frozen):
    """An env file: read on the host, never readable in the sandbox."""

    path: str = Field(description="the host path as configured, made absolute")
    origin: EnvOrigin
    target: str | None = Field(
        description="where it would appear under /expert (covered by an empty read-only file "
        "when it exists); None when it lies outside the Expert's folder"
    )


class SandboxPlan(_Frozen):
    """The complete, reviewable description of one expert's sandbox."""

    expert: str
    config_dir: str
    skills: tuple[SkillLaunch, ...]
    sse_skills: tuple[SseSkill, ...] = ()
    interactive_tools: tuple[InteractiveTool, ...] = ()
    egress: tuple[EgressRule, ...] = ()
    limits: Limits = Limits()
    mounts: tuple[Mount, ...] = ()
    hidden: tuple[HiddenFile, ...] = ()
    hidden_name_prefix: str = HIDDEN_NAME_PREFIX
    timeout_ms: int = DEFAULT_TIMEOUT_MS

    @property
    def allowed_domains(self) -> tuple[str, ...]:
        """The final allowlist patterns, in plan order (what the proxy policy holds)."""
        return tuple(rule.pattern for rule in self.egress)

    @property
    def packages(self) -> tuple[PackageSpec, ...]:
        """Every package the per-expert image must preinstall."""
        return tuple(s.package for s in self.skills if s.package is not None)

    @property
    def expert_mount(self) -> Mount | None:
        """The mount of the Expert's folder at /expert, None when no skill needs it."""
        return next((m for m in self.mounts if m.target == EXPERT_DIR), None)


def plan(
    config: PerstackConfig, expert_key: str, env_paths: Sequence[Path | str] = ()
) -> SandboxPlan:
    """Decide everything the sandbox of `expert_key` will do, without touching Docker.

    `env_paths` are the `--env-path` files given (absolute, or relative to the config's
    folder); every env file, read or not, is named in `hidden`.

    Raises:
        UnknownExpertError: the expert is not defined in the config.

    """
    expert = config.experts.get(expert_key)
    if expert is None:
        known = ", ".join(sorted(config.experts)) or "none"
        raise UnknownExpertError(f"no expert {expert_key!r} in the config (defined: {known})")
    stdio, sse, interactive = _skills_by_type(expert)
    launches = tuple(_launch(name, skill) for name, skill in stdio)
    sse_skills = tuple(
        SseSkill(name=name, endpoint=s.endpoint, host=s.host, pick=s.pick, omit=s.omit)
        for name, s in sse
    )
    requests = [(p, launch.name) for launch in launches for p in launch.allowed_domains]
    for name, skill in sse:
        requests += [(skill.host, name), *((p, name) for p in skill.allowed_domains)]
    return SandboxPlan(
        expert=expert_key,
        config_dir=config.config_dir,
        skills=launches,
        sse_skills=sse_skills,
        interactive_tools=tuple(_interactive_tools(interactive)),
        egress=fold_egress(requests),
        mounts=_mounts(config.config_dir, launches),
        hidden=hidden_files(config.config_dir, config.env_path, env_paths),
        timeout_ms=config.timeout or DEFAULT_TIMEOUT_MS,
    )


def _mounts(config_dir: str, launches: Sequence[SkillLaunch]) -> tuple[Mount, ...]:
    # Only a skill that works in /expert gets the folder (decision 73): in CI the config sits
    # at the repository's root, and its checkout holds the job's token.
    if not needs_expert_folder(launches):
        return ()
    return (Mount(source=config_dir, target=EXPERT_DIR, read_only=True),)


def needs_expert_folder(launches: Iterable[SkillLaunch]) -> bool:
    """Tell whether a skill works in /expert: a local command, or an argument naming it.

    An argument counts wherever /expert appears in it (`--root=/expert/data` too).
    """
    return any(
        launch.kind == "local" or any(EXPERT_DIR in arg for arg in launch.argv)
        for launch in launches
    )


def hidden_files(
    config_dir: str, toml_paths: Sequence[str], cli_paths: Sequence[Path | str]
) -> tuple[HiddenFile, ...]:
    """Name every env file: the defaults, the TOML's `envPath`, the `--env-path` files.

    All of them are hidden, not only those this run reads: a `.env` next to perstack.toml holds
    secrets whether or not `--env-path` replaced it. Pure: paths are compared as text; the run
    resolves links and finds other `.env*` files and hard links when it starts
    (`check_expert_folder`).
    """
    named: list[tuple[str, EnvOrigin]] = [(name, "default") for name in DEFAULT_ENV_FILES]
    named += [(name, "envPath") for name in toml_paths]
    named += [(str(path), "--env-path") for path in cli_paths]
    root = posixpath.normpath(config_dir)
    found: dict[str, HiddenFile] = {}
    for name, origin in named:
        path = posixpath.normpath(posixpath.join(root, name))
        inside = _relative_inside(path, root)
        target = f"{EXPERT_DIR}/{inside}" if inside else None
        found.setdefault(path, HiddenFile(path=path, origin=origin, target=target))
    return tuple(found[path] for path in sorted(found))


def container_argv(
    kind: Literal["npx", "uvx"], package: PackageSpec, args: tuple[str, ...]
) -> tuple[str, ...]:
    """Return the command that starts a preinstalled package offline in the container.

    Both kinds run `/opt/perstack/entry/<slug>`, a link the image build makes to the executable
    `npx <name>` / `uvx <name>` would pick. The package managers themselves cannot start an
    installed package from a read-only root with no registry: `npx --offline --prefix DIR`
    finds the package but not its bin outside DIR, and `uvx --offline` writes into the tool dir.
    """
    del kind  # both package managers resolve to the same entry-link layout
    return (f"{ENTRY_DIR}/{package.slug}", *args)


def skill_slug(skill_key: str) -> str:
    """Return a filesystem-safe name for a skill, unique by the hash of its exact key."""
    digest = hashlib.sha256(skill_key.encode()).hexdigest()[:8]
    readable = re.sub(r"[^a-z0-9._-]+", "-", skill_key.lower()).strip("-.")[:48]
    return f"{readable or 'skill'}-{digest}"


def fold_egress(requests: Iterable[tuple[str, str]]) -> tuple[EgressRule, ...]:
    """Merge (pattern, source skill) pairs: dedupe, fold entries a wildcard covers, sort."""
    sources: dict[str, set[str]] = {}
    for pattern, source in requests:
        sources.setdefault(pattern, set()).add(source)
    wildcards = [p for p in sources if p.startswith("*.")]
    for pattern in sorted(sources, key=len, reverse=True):
        host = pattern.removeprefix("*.")
        cover = match_host(host, [w for w in wildcards if w != pattern])
        if cover is not None:
            sources[cover] |= sources.pop(pattern)
    return tuple(
        EgressRule(pattern=p, sources=tuple(sorted(sources[p])), shared_suffix=shared_suffix(p))
        for p in sorted(sources)
    )


def plan_to_json(sandbox: SandboxPlan) -> str:
    """Render the plan as stable JSON: sorted keys, fixed indent, one trailing newline."""
    return json.dumps(sandbox.model_dump(mode="json"), sort_keys=True, indent=2) + "\n"


def _skills_by_type(
    expert: Expert,
) -> tuple[
    list[tuple[str, McpStdioSkill]],
    list[tuple[str, McpSseSkill]],
    list[tuple[str, InteractiveSkill]],
]:
    stdio, sse, interactive = [], [], []
    for name in sorted(expert.skills):
        skill = expert.skills[name]
        if skill.type == "mcpStdioSkill":
            stdio.append((name, skill))
        elif skill.type == "mcpSseSkill":
            sse.append((name, skill))
        else:
            interactive.append((name, skill))
    return stdio, sse, interactive


def _launch(name: str, skill: McpStdioSkill) -> SkillLaunch:
    package: PackageSpec | None = None
    kind: Literal["npx", "uvx", "local"] = "local"
    argv, workdir = (skill.command, *skill.args), EXPERT_DIR
    if skill.is_package:
        launcher: Literal["npx", "uvx"] = "npx" if skill.command == "npx" else "uvx"
        package_name, version, args = skill.package_spec()
        package = PackageSpec(
            manager="npm" if launcher == "npx" else "pypi",
            name=package_name,
            version_spec=version,
            slug=skill_slug(name),
        )
        kind, argv, workdir = launcher, container_argv(launcher, package, args), WORKSPACE_DIR
    return SkillLaunch(
        name=name,
        kind=kind,
        argv=argv,
        package=package,
        env_names=tuple(sorted(set(skill.required_env))),
        pick=skill.pick,
        omit=skill.omit,
        lazy_init=skill.lazy_init,
        workdir=workdir,
        allowed_domains=tuple(sorted(set(skill.allowed_domains))),
    )


def _interactive_tools(skills: list[tuple[str, InteractiveSkill]]) -> Iterable[InteractiveTool]:
    for name, skill in skills:
        for tool_name in sorted(skill.tools):
            tool = skill.tools[tool_name]
            yield InteractiveTool(
                skill=name,
                name=tool_name,
                description=tool.description or "",
                input_schema=json.loads(tool.input_json_schema),
            )


def _relative_inside(path: str, root: str) -> str | None:
    """Return `path` relative to `root` when it lies strictly inside it (both normalised)."""
    pure, base = PurePosixPath(path), PurePosixPath(root)
    if pure.is_absolute() != base.is_absolute() or not pure.is_relative_to(base):
        return None
    relative = pure.relative_to(base)
    return None if not relative.parts or ".." in relative.parts else str(relative)
