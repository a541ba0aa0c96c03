"""The second stage: what one Expert's sandbox will do, decided without touching Docker.

`plan(config, expert)` is a pure function from the validated config to a `SandboxPlan`: each
skill's launch command, the NAMES of its variables, the final egress allowlist, limits and
mounts (`plan --json` is the artefact a security review reads). The secrets side turns those
names into values for one run: `resolve_secrets` picks each skill's values from a mapping its
caller chose (`host_secrets` reads env files and the environment the way the CLI does), and
`skill_environment` builds the exact environment of one skill process. The plan names every env
file (`hidden`); `check_expert_folder` walks the Expert's folder when a run starts, finds what
else to hide under /expert, and refuses a folder the skills could not read.

```
_plan.py     SandboxPlan and its parts, plan(), launch commands, the plan's JSON
_text.py     the plan's text, for a human reviewer
_secrets.py  Secret, dotenv files, resolving requiredEnv names to values, a skill's environment
_folder.py   the Expert's folder on the host: env files to cover, paths skills cannot read
_sealing.py  sealed secrets: placeholders for the skills, the proxy's seal message
```
"""

from __future__ import annotations

from perstack_sandbox.config import DEFAULT_ENV_FILES
from perstack_sandbox.plan._folder import FolderCheck, check_expert_folder, uses_expert_folder
from perstack_sandbox.plan._plan import (
    DEFAULT_CPUS,
    DEFAULT_MEMORY_BYTES,
    DEFAULT_PIDS,
    DEFAULT_TIMEOUT_MS,
    ENTRY_DIR,
    EXPERT_DIR,
    HIDDEN_NAME_PREFIX,
    NPM_ROOT,
    UV_TOOL_DIR,
    WORKSPACE_DIR,
    EgressRule,
    HiddenFile,
    InteractiveTool,
    Limits,
    Mount,
    PackageSpec,
    SandboxPlan,
    SkillLaunch,
    SseSkill,
    container_argv,
    fold_egress,
    hidden_files,
    plan,
    plan_to_json,
    skill_slug,
)
from perstack_sandbox.plan._sealing import SealedSecrets, seal_secrets
from perstack_sandbox.plan._secrets import (
    MINIMAL_PATH,
    Secret,
    SkillSecrets,
    env_file_secrets,
    env_files,
    host_secrets,
    load_env_files,
    parse_dotenv,
    resolve_secrets,
    skill_environment,
)
from perstack_sandbox.plan._text import plan_to_text

__all__ = [
    "DEFAULT_CPUS",
    "DEFAULT_ENV_FILES",
    "DEFAULT_MEMORY_BYTES",
    "DEFAULT_PIDS",
    "DEFAULT_TIMEOUT_MS",
    "ENTRY_DIR",
    "EXPERT_DIR",
    "HIDDEN_NAME_PREFIX",
    "MINIMAL_PATH",
    "NPM_ROOT",
    "UV_TOOL_DIR",
    "WORKSPACE_DIR",
    "EgressRule",
    "FolderCheck",
    "HiddenFile",
    "InteractiveTool",
    "Limits",
    "Mount",
    "PackageSpec",
    "SandboxPlan",
    "SealedSecrets",
    "Secret",
    "SkillLaunch",
    "SkillSecrets",
    "SseSkill",
    "check_expert_folder",
    "container_argv",
    "env_file_secrets",
    "env_files",
    "fold_egress",
    "hidden_files",
    "host_secrets",
    "load_env_files",
    "parse_dotenv",
    "plan",
    "plan_to_json",
    "plan_to_text",
    "resolve_secrets",
    "seal_secrets",
    "skill_environment",
    "skill_slug",
    "uses_expert_folder",
]
