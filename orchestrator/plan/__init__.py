"""The second stage: what one Expert's sandbox will do, decided without touching Docker.

`plan(config, expert)` is a pure function from the validated config to a `SandboxPlan`: each
skill's launch command, the NAMES of its variables, the final egress allowlist, limits and
mounts (`plan --json` is the artefact a security review reads). The secrets side turns those
names into values for one run: `resolve_secrets` picks each skill's values from a mapping its
caller chose (`host_secrets` reads env files and the environment the way the CLI does), and
`skill_environment` builds the exact environment of one skill process.

```
_plan.py     SandboxPlan and its parts, plan(), launch commands, the plan's text and JSON
_secrets.py  Secret, dotenv files, resolving requiredEnv names to values, a skill's environment
```
"""

from __future__ import annotations

from perstack_sandbox.plan._plan import (
    DEFAULT_TIMEOUT_MS,
    ENTRY_DIR,
    EXPERT_DIR,
    NPM_ROOT,
    UV_TOOL_DIR,
    WORKSPACE_DIR,
    EgressRule,
    InteractiveTool,
    Limits,
    Mount,
    PackageSpec,
    SandboxPlan,
    SkillLaunch,
    SseSkill,
    container_argv,
    fold_egress,
    plan,
    plan_to_json,
    plan_to_text,
    skill_slug,
)
from perstack_sandbox.plan._secrets import (
    DEFAULT_ENV_FILES,
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

__all__ = [
    "DEFAULT_ENV_FILES",
    "DEFAULT_TIMEOUT_MS",
    "ENTRY_DIR",
    "EXPERT_DIR",
    "MINIMAL_PATH",
    "NPM_ROOT",
    "UV_TOOL_DIR",
    "WORKSPACE_DIR",
    "EgressRule",
    "InteractiveTool",
    "Limits",
    "Mount",
    "PackageSpec",
    "SandboxPlan",
    "Secret",
    "SkillLaunch",
    "SkillSecrets",
    "SseSkill",
    "container_argv",
    "env_file_secrets",
    "env_files",
    "fold_egress",
    "host_secrets",
    "load_env_files",
    "parse_dotenv",
    "plan",
    "plan_to_json",
    "plan_to_text",
    "resolve_secrets",
    "skill_environment",
    "skill_slug",
]
