"""The perstack.toml model: every runtime setting, expert and skill, validated strictly.

`load_config(path)` returns the model and its warnings (unknown keys), or raises `ConfigError`
holding EVERY problem found, each located by its TOML path (`experts."a".skills."b".args[0]`).
The value rules live in `_rules.py`, the field types in `_types.py`; locating and reporting
issues in `_report.py`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from perstack_sandbox.config import _rules as rules
from perstack_sandbox.config._envfiles import env_file_issues
from perstack_sandbox.config._report import (
    check_publish_rules,
    find_unknown_keys,
    read_toml,
    validation_issues,
)
from perstack_sandbox.config._rules import PROTECTED_ENV_NAMES, PROTECTED_ENV_PREFIXES
from perstack_sandbox.config._types import (
    AllowlistEntry,
    EnvName,
    ExpertKey,
    HttpsUrl,
    InputModel,
    PositiveInt,
    Provider,
    ProviderSkill,
    ProviderToolOptions,
    ReasoningBudget,
    SemVer,
    SkillKey,
    Tag,
    Text,
    ToolName,
)
from perstack_sandbox.config._warnings import config_warnings
from perstack_sandbox.errors import ConfigError, ConfigIssue

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
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
    "is_protected_env_name",
    "load_config",
    "parse_config",
]

is_protected_env_name = rules.is_protected_env_name
MAX_DESCRIPTION_CHARS = 2048
MAX_INSTRUCTION_CHARS = 20 * 1024
PACKAGE_LAUNCHERS = frozenset({"npx", "uvx"})


class _SkillBase(InputModel):
    description: Text | None = None
    rule: Text | None = None
    pick: tuple[ToolName, ...] = ()
    omit: tuple[ToolName, ...] = ()
    allowed_domains: tuple[AllowlistEntry, ...] = ()


class McpStdioSkill(_SkillBase):
    """An MCP server started inside the sandbox: an npx/uvx package or a local command."""

    type: Literal["mcpStdioSkill"]
    command: Annotated[StrictStr, AfterValidator(rules.check_local_command)]
    package_name: StrictStr | None = None
    args: tuple[Annotated[StrictStr, AfterValidator(rules.check_arg_syntax)], ...] = ()
    required_env: tuple[EnvName, ...] = ()
    lazy_init: StrictBool = False

    @property
    def is_package(self) -> bool:
        """True when the skill runs a registry package through npx or uvx."""
        return self.command in PACKAGE_LAUNCHERS

    @field_validator("package_name")
    @classmethod
    def _check_package_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        command = info.data.get("command")
        if value is None or command not in PACKAGE_LAUNCHERS:
            return value
        parse = rules.parse_npm_spec if command == "npx" else rules.parse_pypi_spec
        parse(value)
        return value

    @field_validator("args")
    @classmethod
    def _check_args(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if info.data.get("command") in PACKAGE_LAUNCHERS:
            rules.check_launcher_flags(value)
        return value

    @model_validator(mode="after")
    def _check_launch(self) -> Self:
        if not self.is_package:
            if self.package_name is not None:
                raise ValueError("packageName applies to npx and uvx skills only")
            return self
        self.package_spec()
        return self

    def package_spec(self) -> tuple[str, str, tuple[str, ...]]:
        """Return (name, version spec, remaining args) of an npx/uvx skill.

        Raises:
            ValueError: no package is named, or a spec or a flag before it is invalid.

        """
        args = [a for a in self.args if a not in rules.NPX_YES_FLAGS]
        spec = self.package_name
        if spec is None:
            if not args or args[0].startswith("-"):
                raise ValueError(
                    f"{self.command} skill names no package: set packageName, or make the "
                    "package the first argument (flags before it would go to "
                    f"{self.command} itself)"
                )
            spec, args = args[0], args[1:]
        parse = rules.parse_npm_spec if self.command == "npx" else rules.parse_pypi_spec
        name, version = parse(spec)
        return name, version, tuple(args)


class McpSseSkill(_SkillBase):
    """A remote MCP server reached over https through the sandbox's proxy."""

    type: Literal["mcpSseSkill"]
    endpoint: Annotated[StrictStr, AfterValidator(rules.check_sse_endpoint)]

    @property
    def host(self) -> str:
        """The canonical host of the endpoint (added to the allowlist)."""
        return rules.endpoint_host(self.endpoint)


class InteractiveToolDef(InputModel):
    """A tool of an interactiveSkill, answered by the host's user."""

    description: Text | None = None
    input_json_schema: Annotated[StrictStr, AfterValidator(rules.check_input_json_schema)]


class InteractiveSkill(InputModel):
    """Tools that pause the expert for input from the user."""

    type: Literal["interactiveSkill"]
    description: Text | None = None
    rule: Text | None = None
    tools: dict[ToolName, InteractiveToolDef] = Field(min_length=1)


Skill = Annotated[McpStdioSkill | McpSseSkill | InteractiveSkill, Field(discriminator="type")]


class Expert(InputModel):
    """`[experts."key"]`: one Expert and its skills."""

    version: SemVer = "1.0.0"
    min_runtime_version: SemVer | None = None
    description: Annotated[Text, Field(max_length=MAX_DESCRIPTION_CHARS)] | None = None
    instruction: Annotated[Text, Field(min_length=1, max_length=MAX_INSTRUCTION_CHARS)]
    delegates: tuple[ExpertKey, ...] = ()
    tags: tuple[Tag, ...] = ()
    skills: dict[SkillKey, Skill] = Field(default_factory=dict)
    provider_tools: tuple[Text, ...] = ()
    provider_skills: tuple[ProviderSkill, ...] = ()
    provider_tool_options: ProviderToolOptions | None = None


class PerstackConfig(InputModel):
    """The whole of perstack.toml."""

    model: Text | None = None
    temperature: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] | None = None
    reasoning_budget: ReasoningBudget | None = None
    runtime: Literal["docker", "local", "cursor", "claude-code", "gemini"] | None = None
    max_steps: PositiveInt | None = None
    max_retries: Annotated[StrictInt, Field(ge=0, le=1000)] | None = None
    timeout: PositiveInt | None = None
    env_path: tuple[Text, ...] = ()
    provider: Provider | None = None
    perstack_api_base_url: HttpsUrl | None = None
    perstack_base_skill_command: tuple[Text, ...] = ()
    experts: dict[ExpertKey, Expert] = Field(default_factory=dict)

    _config_dir: str = PrivateAttr(default=".")

    @property
    def config_dir(self) -> str:
        """The absolute folder that holds perstack.toml ('.' when parsed from text)."""
        return self._config_dir


@functools.cache
def config_schema() -> dict[str, Any]:
    """Return the JSON Schema of perstack.toml (what `perstack-sandbox schema` prints)."""
    schema = PerstackConfig.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "perstack.toml"
    return schema


def parse_config(
    text: str, *, config_dir: str = ".", strict: bool = False, publish: bool = False
) -> tuple[PerstackConfig, list[ConfigIssue]]:
    """Validate perstack.toml text; return the model and its warnings.

    Warnings are unknown keys and what `_warnings` reports (no Expert, pick with omit,
    wildcards over shared suffixes). `strict` makes every warning an error; `publish` adds the
    registry's publishing rules. A ConfigError lists the errors first, then any warnings
    (`is_warning`).

    Raises:
        ConfigError: the text is not TOML or breaks any rule; holds every issue found.

    """
    document = read_toml(text)
    warnings = find_unknown_keys(document, config_schema())
    # Under --strict warnings are errors; otherwise they ride along after the errors.
    try:
        config = PerstackConfig.model_validate(document)
    except ValueError as exc:
        issues = validation_issues(exc, document)
        raise ConfigError(issues + (_as_errors(warnings) if strict else warnings)) from exc
    warnings += config_warnings(config)
    errors = _as_errors(warnings) if strict else []
    errors += check_publish_rules(document) if publish else []
    if errors:
        raise ConfigError(errors + ([] if strict else warnings))
    config._config_dir = config_dir  # noqa: SLF001 - set once, right after construction
    return config, [] if strict else warnings


def _as_errors(warnings: list[ConfigIssue]) -> list[ConfigIssue]:
    return [ConfigIssue(w.path, w.message) for w in warnings]


def load_config(
    path: Path, *, strict: bool = False, publish: bool = False
) -> tuple[PerstackConfig, list[ConfigIssue]]:
    """Read and validate perstack.toml at `path`; return the model and its warnings.

    Besides `parse_config`'s warnings: each env file the config names (or a default one, by
    a link) that lies outside its folder (`env_file_issues`); `strict` makes them errors.

    Raises:
        ConfigError: the file is unreadable, not TOML, or breaks any rule (every issue).

    """
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read {path}: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        message = f"{path} is not UTF-8 text (byte {exc.start})"
        raise ConfigError([ConfigIssue("", message)]) from exc
    config_dir = str(path.resolve().parent)
    config, warnings = parse_config(text, config_dir=config_dir, strict=strict, publish=publish)
    # Only a config read from a file has a folder its env files must stay in (decision 73).
    outside = env_file_issues(config)
    if strict and outside:
        raise ConfigError(_as_errors(outside))
    return config, warnings + outside
