"""Turning a TOML document's problems into `ConfigIssue`s located by TOML path.

Paths are written the way a user finds them in the file: fixed keys bare, map keys (expert,
skill and tool names, header names) quoted, array items indexed:
`experts."web".skills."search".allowedDomains[1]`.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from perstack_sandbox.config._rules import ItemError
from perstack_sandbox.errors import ConfigError, ConfigIssue

if TYPE_CHECKING:
    from collections.abc import Sequence


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MAP_TABLES = frozenset({"experts", "skills", "tools", "headers"})
_SKILL_TYPES = "'mcpStdioSkill', 'mcpSseSkill', 'interactiveSkill'"
_PROVIDER_NAMES = (
    "'anthropic', 'google', 'openai', 'ollama', 'azure-openai', 'amazon-bedrock', "
    "'google-vertex', 'deepseek'"
)
_TYPE_MESSAGES = {
    "dict_type": "must be a TOML table",
    "model_type": "must be a TOML table",
    "model_attributes_type": "must be a TOML table",
    "tuple_type": "must be an array",
    "list_type": "must be an array",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be a boolean (true or false)",
}


def read_toml(text: str) -> dict[str, Any]:
    """Parse TOML text.

    Raises:
        ConfigError: a syntax error (its message holds the line and column).

    """
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigIssue("", f"TOML syntax error: {exc}")]) from exc
    except RecursionError as exc:
        raise ConfigError([ConfigIssue("", "TOML syntax error: arrays nest too deeply")]) from exc


def toml_path(loc: Sequence[int | str], document: object, *, is_missing: bool = False) -> str:
    """Render a pydantic location as a TOML path, dropping union tags and `[key]` markers.

    Any location item that is not a key of the document is a discriminator tag or a validator
    name, except the last item of a missing-key error: that is the missing key.
    """
    parts: list[str] = []
    node: object = document
    parent = ""
    for index, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(f"[{item}]")
            node = node[item] if isinstance(node, list) and item < len(node) else None
            continue
        if isinstance(node, dict) and item in node:
            node = node[item]
        elif not (is_missing and index == len(loc) - 1):
            continue
        else:
            node = None
        parts.append(_key(item, quoted=parent in _MAP_TABLES))
        parent = item
    return "".join(parts).lstrip(".")


def key_path(*keys: str) -> str:
    """Render table keys as a TOML path: `key_path("experts", "a", "skills", "b")`."""
    parents = ("", *keys)
    return "".join(_key(key, quoted=parents[i] in _MAP_TABLES) for i, key in enumerate(keys))[1:]


def _key(key: str, *, quoted: bool) -> str:
    if quoted or not _BARE_KEY.fullmatch(key):
        return "." + json.dumps(key, ensure_ascii=False)
    return f".{key}"


def validation_issues(error: ValueError, document: dict[str, Any]) -> list[ConfigIssue]:
    """Convert a pydantic ValidationError into issues, one per problem, in document order."""
    if not isinstance(error, ValidationError):
        return [ConfigIssue("", str(error))]
    issues = []
    for detail in error.errors(include_url=False):
        path = toml_path(detail["loc"], document, is_missing=detail["type"] == "missing")
        ctx = detail.get("ctx") or {}
        cause = ctx.get("error")
        if isinstance(cause, ItemError):
            path += f"[{cause.index}]"
        if detail["type"] in {"union_tag_invalid", "union_tag_not_found"}:
            # The problem is the tag's own key (`type`, `providerName`), not the whole table.
            is_skill = ctx.get("discriminator") == "'type'"
            path += _key("type" if is_skill else "providerName", quoted=False)
        issues.append(ConfigIssue(path, _message(detail)))
    return list(dict.fromkeys(issues))


def _message(detail: Any) -> str:  # noqa: ANN401 - pydantic's ErrorDetails TypedDict
    kind = detail["type"]
    ctx = detail.get("ctx") or {}
    if kind == "missing":
        return f"required key {str(detail['loc'][-1])!r} is missing"
    if kind in {"union_tag_invalid", "union_tag_not_found"}:
        is_skill = ctx.get("discriminator") == "'type'"
        what = "skill type" if is_skill else "provider name"
        expected = _SKILL_TYPES if is_skill else _PROVIDER_NAMES
        if kind == "union_tag_not_found":
            return f"no {what} given: must be one of {expected}"
        return f"unknown {what} {ctx.get('tag')!r}: must be one of {expected}"
    if kind in {"too_long", "string_too_long", "too_short", "string_too_short"}:
        return _length_message(kind, detail["input"], ctx)
    if kind in _TYPE_MESSAGES:
        return f"{_TYPE_MESSAGES[kind]}, not {type(detail['input']).__name__}"
    message = str(detail["msg"])
    return message.removeprefix("Value error, ")


def _length_message(kind: str, value: object, ctx: dict[str, Any]) -> str:
    unit = "characters" if isinstance(value, str) else "entries"
    size = len(value) if isinstance(value, str | list | tuple | dict) else "?"
    if kind.endswith("too_long"):
        return f"must be at most {ctx.get('max_length')} {unit}, not {size}"
    if ctx.get("min_length") == 1:
        return "must not be empty"
    return f"must be at least {ctx.get('min_length')} {unit}, not {size}"


def find_unknown_keys(document: dict[str, Any], schema: dict[str, Any]) -> list[ConfigIssue]:
    """Return a warning for every key the JSON Schema of perstack.toml does not know."""
    warnings: list[ConfigIssue] = []
    _walk(document, schema, schema.get("$defs", {}), "", warnings, parent="")
    return warnings


def _walk(  # noqa: PLR0913 - recursive walk state
    node: object,
    schema: dict[str, Any],
    defs: dict[str, Any],
    path: str,
    warnings: list[ConfigIssue],
    *,
    parent: str,
) -> None:
    schema = _resolve(node, schema, defs)
    if isinstance(node, list) and "items" in schema:
        for index, item in enumerate(node):
            _walk(item, schema["items"], defs, f"{path}[{index}]", warnings, parent="")
        return
    if not isinstance(node, dict):
        return
    properties: dict[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    for key, value in node.items():
        where = path + _key(key, quoted=parent in _MAP_TABLES)
        if key in properties:
            _walk(value, properties[key], defs, where, warnings, parent=key)
        elif isinstance(extra, dict):
            _walk(value, extra, defs, where, warnings, parent="")
        elif properties:
            warnings.append(
                ConfigIssue(where.lstrip("."), _unknown(key, properties), is_warning=True)
            )


def _resolve(node: object, schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    for _ in range(8):  # refs and unions nest only a few levels in our schema
        if "$ref" in schema:
            schema = defs.get(schema["$ref"].rsplit("/", 1)[-1], {})
            continue
        options = schema.get("oneOf") or schema.get("anyOf")
        if not options:
            return schema
        discriminator = schema.get("discriminator", {})
        mapping = discriminator.get("mapping", {})
        if isinstance(node, dict) and mapping:
            tag = node.get(discriminator.get("propertyName"))
            schema = {"$ref": mapping[tag]} if isinstance(tag, str) and tag in mapping else {}
        else:
            schema = next((o for o in options if o.get("type") != "null"), {})
    return schema


def _unknown(key: str, known: dict[str, Any]) -> str:
    folded = {name.lower().replace("_", ""): name for name in known}
    guess = folded.get(key.lower().replace("_", "").replace("-", ""))
    if guess is None:
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        guess = close[0] if close else None
    hint = f" (did you mean {guess!r}?)" if guess else ""
    return f"unknown key {key!r}{hint}"


def check_publish_rules(document: dict[str, Any]) -> list[ConfigIssue]:
    """Return the issues that stop publishing to the registry: npx/uvx only, explicit semver.

    `document` is a perstack.toml that the model accepted, so its shape is known.
    """
    issues: list[ConfigIssue] = []
    for key, expert in document["experts"].items():
        where = _key(key, quoted=True).lstrip(".")
        if "version" not in expert:
            issues.append(
                ConfigIssue(
                    f"experts.{where}",
                    "publish rule: an expert in the registry states its semver version",
                )
            )
        for skill_key, skill in expert.get("skills", {}).items():
            command = skill.get("command")
            if command is not None and command not in {"npx", "uvx"}:
                issues.append(
                    ConfigIssue(
                        f"experts.{where}.skills.{_key(skill_key, quoted=True).lstrip('.')}"
                        ".command",
                        f"publish rule: only npx and uvx skills can be published; the local "
                        f"command {command!r} runs files that are not in the registry",
                    )
                )
    return issues
