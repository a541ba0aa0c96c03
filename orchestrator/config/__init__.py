"""The first stage: perstack.toml parsed and validated into a frozen model.

`load_config(path)` (or `parse_config(text, config_dir=...)`) returns the model and its warnings,
or raises `ConfigError` holding every problem found, each with its TOML path.

```
_model.py     PerstackConfig, Expert and the skill types; loading, parsing, the JSON Schema
_types.py     field types (host patterns, env names, package specs) built from the rules
_rules.py     the value rules themselves (pure functions)
_report.py    TOML paths, unknown keys, pydantic errors made readable, publish rules
_warnings.py  what Perstack accepts but a reviewer should see (warnings; --strict refuses)
_envfiles.py  which env files a config may name: only files inside its own folder
```
"""

from __future__ import annotations

from perstack_sandbox.config._envfiles import (
    DEFAULT_ENV_FILES,
    configured_env_files,
    env_file_issues,
    is_outside_folder,
)
from perstack_sandbox.config._model import (
    PROTECTED_ENV_NAMES,
    PROTECTED_ENV_PREFIXES,
    Expert,
    InteractiveSkill,
    InteractiveToolDef,
    McpSseSkill,
    McpStdioSkill,
    PerstackConfig,
    Provider,
    Skill,
    config_schema,
    is_protected_env_name,
    load_config,
    parse_config,
)

__all__ = [
    "DEFAULT_ENV_FILES",
    "PROTECTED_ENV_NAMES",
    "PROTECTED_ENV_PREFIXES",
    "Expert",
    "InteractiveSkill",
    "InteractiveToolDef",
    "McpSseSkill",
    "McpStdioSkill",
    "PerstackConfig",
    "Provider",
    "Skill",
    "config_schema",
    "configured_env_files",
    "env_file_issues",
    "is_outside_folder",
    "is_protected_env_name",
    "load_config",
    "parse_config",
]
