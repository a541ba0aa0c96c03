"""SandboxPlan: everything a run will do, decided before anything runs.

`plan(config, expert_key)` is a pure function. Its JSON form (`plan --json`) is the artefact a
security review reads and diffs, so it must be stable: same input, byte-identical output.

Container layout contract (shared with `images.py`, which builds it):
- npx skill packages are installed at build time with
  `npm install --prefix /opt/perstack/npm/<slug> <name>@<spec>`;
- uvx skill packages are installed at build time with `uv tool install` into
  `/opt/perstack/uv/tools` (bin links in `/opt/perstack/uv/bin`);
- `SkillLaunch.argv` is the exact command run in the container, which never touches a
  registry at run time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NPM_ROOT = "/opt/perstack/npm"
UV_TOOL_DIR = "/opt/perstack/uv/tools"
UV_BIN_DIR = "/opt/perstack/uv/bin"
WORKSPACE_DIR = "/workspace"
EXPERT_DIR = "/expert"

DEFAULT_MEMORY_BYTES = 2 * 1024**3
DEFAULT_CPUS = 2.0
DEFAULT_PIDS = 256
DEFAULT_TIMEOUT_MS = 60_000


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
    timeout_ms: int = DEFAULT_TIMEOUT_MS

    @property
    def allowed_domains(self) -> tuple[str, ...]:
        """The final allowlist patterns, in plan order (what the proxy policy holds)."""
        return tuple(rule.pattern for rule in self.egress)

    @property
    def packages(self) -> tuple[PackageSpec, ...]:
        """Every package the per-expert image must preinstall."""
        return tuple(s.package for s in self.skills if s.package is not None)
