"""The service's JSON API: what a request may hold, and how an error becomes an answer.

Pure: no sockets, no Docker. A `POST /v1/runs` body is validated into `CreateRun`; secret
values are `SecretStr`, so no repr, log line or validation message ever shows one. Bad input
is answered 400 with the very lines the CLI prints for the same mistake (`text.error_lines`).
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from perstack_sandbox.config import McpStdioSkill
from perstack_sandbox.engine import DEFAULT_BACKEND, BackendName
from perstack_sandbox.errors import (
    ConfigError,
    ConfigIssue,
    InputError,
    IsolationError,
    SandboxError,
    UsageError,
)
from perstack_sandbox.isolation import DEFAULT_ISOLATION, Isolation
from perstack_sandbox.plan import Limits  # noqa: TC001 - pydantic needs it at run time
from perstack_sandbox.text import error_lines

if TYPE_CHECKING:
    from typing import Self

    from perstack_sandbox.config import PerstackConfig

API_VERSION: Final = "v1"
MAX_BODY_BYTES: Final = 1 << 20  # a perstack.toml and its secrets; more is a mistake or abuse


class CreateRun(BaseModel):
    """The body of `POST /v1/runs`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    expert: str = Field(min_length=1, description="The Expert's key in the config.")
    config: str | None = Field(default=None, description="perstack.toml as text.")
    config_path: str | None = Field(
        default=None, description="The path of a perstack.toml on the service's host."
    )
    env: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Secret values by variable name; each skill gets its requiredEnv names. "
        "Never logged, never written to disk.",
    )
    workspace: str | None = Field(
        default=None, description="An absolute folder of the service's host, at /workspace."
    )
    isolation: Isolation = DEFAULT_ISOLATION
    limits: Limits | None = None
    prefix_tools: bool = False
    seal_secrets: bool = Field(
        default=False,
        description="Placeholders in the skills, real values only in the proxy (sealed secrets).",
    )
    seal_passthrough: list[str] = Field(
        default_factory=list, description="Hosts that stay plain tunnels under seal_secrets."
    )
    accept_tool_changes: bool = Field(
        default=False, description="Serve skills whose tools differ from the lock, this once."
    )
    backend: BackendName = DEFAULT_BACKEND
    pool: bool | None = Field(
        default=None,
        description="Omitted: claim a warm sandbox when the service keeps a pool this run "
        "fits, else start one cold. true: claim one or answer 400 (no pool of this Expert, "
        "or the run does not fit it: a workspace, other limits or isolation). false: cold.",
    )

    @field_validator("workspace")
    @classmethod
    def _absolute_workspace(cls, value: str | None) -> str | None:
        # The service's cwd is nothing the client knows: a relative folder would be a guess.
        if value is not None and not PurePosixPath(value).is_absolute():
            raise ValueError("must be an absolute path (the service has its own cwd)")
        return value

    @model_validator(mode="after")
    def _one_config(self) -> Self:
        if (self.config is None) == (self.config_path is None):
            raise ValueError("give exactly one of `config` (TOML text) and `config_path`")
        return self

    def secrets(self) -> dict[str, str]:
        """Return the secret values, for the run only."""
        return {name: value.get_secret_value() for name, value in self.env.items()}


def parse_create(body: bytes) -> CreateRun:
    """Validate a `POST /v1/runs` body.

    Raises:
        UsageError: not JSON, not an object, or a field is missing or wrong (never quoting a
            value: it may be a secret).

    """
    if len(body) > MAX_BODY_BYTES:
        raise UsageError(f"the request body is over {MAX_BODY_BYTES} bytes")
    try:
        document = json.loads(body or b"null")
    except ValueError as exc:
        raise UsageError(f"the request body is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise UsageError("the request body must be a JSON object")
    try:
        return CreateRun.model_validate(document)
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors(include_input=False, include_url=False)]
        raise UsageError("bad request: " + "; ".join(problems)) from None


def _problem(error: Any) -> str:  # noqa: ANN401 - pydantic's ErrorDetails TypedDict
    where = ".".join(str(part) for part in error.get("loc", ()))
    message = str(error.get("msg", "invalid"))
    return f"{where}: {message}" if where else message


def check_text_config(config: PerstackConfig, expert: str) -> None:
    """Refuse what a config sent as text names relative to a folder it does not come with.

    Text has no folder: its Expert's folder (/expert) is an empty scratch folder, and the
    service reads no env file (secrets come in `env`). So `envPath` cannot name anything, and a
    local command skill of `expert` (not npx/uvx) would run from an empty folder. Package and
    remote skills need no folder. An unknown `expert` is left to the plan, which names it.

    Raises:
        ConfigError: every such field, by its TOML path, with what to send instead.

    """
    issues = []
    if config.env_path:
        issues.append(
            ConfigIssue(
                "envPath",
                "a config sent as text has no folder for env files; send the "
                "values in `env`, or send `config_path`",
            )
        )
    chosen = config.experts.get(expert)
    for name, skill in chosen.skills.items() if chosen is not None else ():
        if isinstance(skill, McpStdioSkill) and not skill.is_package:
            issues.append(
                ConfigIssue(
                    f'experts."{expert}".skills."{name}".command',
                    f"the local command {skill.command!r} runs from the Expert's folder, which a "
                    "config sent as text does not have; send `config_path`",
                )
            )
    if issues:
        raise ConfigError(issues)


def status_for(error: SandboxError) -> int:
    """Return the HTTP status of an error: 400 for bad input (what the CLI exits 2 for)."""
    if isinstance(error, (InputError, IsolationError)):
        return 400
    return 500


def error_body(error: SandboxError) -> dict[str, object]:
    """Return the JSON answer of an error: its message and the CLI's stderr lines."""
    return {"error": str(error), "lines": error_lines(error)}
