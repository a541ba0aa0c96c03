"""Shared field types of perstack.toml and its provider-side tables (for `config.py`)."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from perstack_sandbox.config import _rules as rules
from perstack_sandbox_proxy.hosts import HostRejected, canonicalise_pattern


def allowlist_entry(raw: str) -> str:
    try:
        return canonicalise_pattern(raw)
    except HostRejected as exc:
        raise ValueError(f"host rule '{exc.reason}': {exc.message}") from exc


def reasoning_budget(value: object) -> str | int:
    if isinstance(value, str) and value in {"minimal", "low", "medium", "high"}:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(
        "reasoningBudget must be 'minimal', 'low', 'medium', 'high' or a token count >= 0"
    )


Text = Annotated[StrictStr, AfterValidator(rules.check_plain_text)]
ExpertKey = Annotated[StrictStr, AfterValidator(rules.check_expert_key)]
SkillKey = Annotated[StrictStr, AfterValidator(rules.check_skill_key)]
ToolName = Annotated[StrictStr, AfterValidator(rules.check_tool_name)]
SemVer = Annotated[StrictStr, AfterValidator(rules.check_semver)]
HttpsUrl = Annotated[StrictStr, AfterValidator(rules.check_https_url)]
AllowlistEntry = Annotated[StrictStr, AfterValidator(allowlist_entry)]
EnvName = Annotated[StrictStr, AfterValidator(rules.check_env_name)]
Tag = Annotated[StrictStr, AfterValidator(rules.check_tag)]
Headers = dict[Annotated[StrictStr, AfterValidator(rules.check_plain_text)], Text]
PositiveInt = Annotated[StrictInt, Field(ge=1, le=10**9)]
ReasoningBudget = Annotated[
    str | int,
    PlainValidator(reasoning_budget),
    WithJsonSchema(
        {"anyOf": [{"enum": ["minimal", "low", "medium", "high"]}, {"type": "integer"}]}
    ),
]


class InputModel(BaseModel):
    """Base of every perstack.toml table: frozen, camelCase keys, unknown keys reported apart."""

    model_config = ConfigDict(frozen=True, extra="ignore", alias_generator=to_camel)


class _ProviderSetting(InputModel):
    """baseUrl (https only) and extra headers, common to most providers."""

    base_url: HttpsUrl | None = None
    headers: Headers = Field(default_factory=dict)


class BasicSetting(_ProviderSetting):
    """Settings of anthropic, google, ollama and deepseek: baseUrl and headers."""


class OpenAiSetting(_ProviderSetting):
    """Settings of the openai provider."""

    organization: Text | None = None
    project: Text | None = None
    name: Text | None = None


class AzureOpenAiSetting(_ProviderSetting):
    """Settings of the azure-openai provider."""

    resource_name: Text | None = None
    api_version: Text | None = None
    use_deployment_based_urls: StrictBool | None = None


class AmazonBedrockSetting(InputModel):
    """Settings of the amazon-bedrock provider."""

    region: Text | None = None


class GoogleVertexSetting(_ProviderSetting):
    """Settings of the google-vertex provider."""

    project: Text | None = None
    location: Text | None = None


class BasicProvider(InputModel):
    """`[provider]` for the providers whose settings are only baseUrl and headers."""

    provider_name: Literal["anthropic", "google", "ollama", "deepseek"]
    setting: BasicSetting | None = None


class OpenAiProvider(InputModel):
    """`[provider]` for openai."""

    provider_name: Literal["openai"]
    setting: OpenAiSetting | None = None


class AzureOpenAiProvider(InputModel):
    """`[provider]` for azure-openai."""

    provider_name: Literal["azure-openai"]
    setting: AzureOpenAiSetting | None = None


class AmazonBedrockProvider(InputModel):
    """`[provider]` for amazon-bedrock."""

    provider_name: Literal["amazon-bedrock"]
    setting: AmazonBedrockSetting | None = None


class GoogleVertexProvider(InputModel):
    """`[provider]` for google-vertex."""

    provider_name: Literal["google-vertex"]
    setting: GoogleVertexSetting | None = None


Provider = Annotated[
    BasicProvider
    | OpenAiProvider
    | AzureOpenAiProvider
    | AmazonBedrockProvider
    | GoogleVertexProvider,
    Field(discriminator="provider_name"),
]


class ProviderSkill(InputModel):
    """A provider-side skill: a builtin one (`skillId`) or a custom one (`name`, `definition`)."""

    type: Literal["builtin", "custom"]
    skill_id: Literal["pdf", "docx", "pptx", "xlsx"] | None = None
    name: Text | None = None
    definition: Text | None = None

    @model_validator(mode="after")
    def _check_kind(self) -> Self:
        if self.type == "builtin" and self.skill_id is None:
            raise ValueError("a builtin provider skill needs skillId")
        if self.type == "custom" and not (self.name and self.definition):
            raise ValueError("a custom provider skill needs name and definition")
        return self


class _ToolUse(InputModel):
    max_uses: PositiveInt | None = None


class WebSearchOptions(_ToolUse):
    """Options of the provider's web search tool."""

    allowed_domains: tuple[AllowlistEntry, ...] = ()


class FileSearchOptions(InputModel):
    """Options of the provider's file search tool."""

    vector_store_ids: tuple[Text, ...] = ()
    max_num_results: PositiveInt | None = None


class ProviderToolOptions(InputModel):
    """Options of provider-side tools (run by the LLM provider, not in the sandbox)."""

    web_search: WebSearchOptions | None = None
    web_fetch: _ToolUse | None = None
    file_search: FileSearchOptions | None = None
