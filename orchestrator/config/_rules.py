"""The value rules of perstack.toml, as pure functions that raise ValueError with the rule.

Pydantic calls these from `config.py`; keeping them here keeps the models readable and lets
`plan.py` reuse the package-spec parsing.
"""

from __future__ import annotations

import json
import re
from urllib.parse import SplitResult, urlsplit

from perstack_sandbox_proxy.hosts import HostRejected, canonicalise_host

MAX_KEY_LENGTH = 214
EXPERT_KEY_RE = re.compile(r"(@[a-z0-9][a-z0-9_-]*/)?[a-z0-9][a-z0-9_-]*")
# The documented skill rule (lowercase letters, digits, '.', '-', '_'), plus a scoped
# package name such as `@perstack/base`, which the seeds use as a skill key.
SKILL_KEY_RE = re.compile(r"(@[a-z0-9][a-z0-9_-]*/)?[a-z0-9][a-z0-9._-]*")
TOOL_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
TAG_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SEMVER_RE = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(-(0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(\.(0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*)?"
    r"(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?"
)
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

PROTECTED_ENV_NAMES: frozenset[str] = frozenset(
    {
        "PATH", "HOME", "USER", "SHELL", "LANG", "TZ", "NODE_OPTIONS", "NODE_PATH",
        "NODE_EXTRA_CA_CERTS", "NODE_USE_ENV_PROXY", "PYTHONPATH", "PYTHONHOME",
        "PYTHONSTARTUP", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "BASH_ENV",
        "ENV", "IFS", "TMPDIR", "TMP", "TEMP", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS",
        "PERL5OPT", "PERL5LIB", "RUBYOPT", "RUBYLIB", "GCONV_PATH",
        "NODE_TLS_REJECT_UNAUTHORIZED",
    }
)  # fmt: skip
"""Variables a skill may never receive from requiredEnv: they steer the loader, an
interpreter, the package managers, TLS trust, the proxy or the private scratch directory,
which the sandbox sets itself.
Compared case-insensitively (curl and many libraries read `http_proxy` in lower case)."""
PROTECTED_ENV_PREFIXES: tuple[str, ...] = (
    "LC_", "LD_", "NPM_CONFIG_", "UV_", "PIP_", "PERSTACK_SANDBOX_",
)  # fmt: skip

NPX_YES_FLAGS = frozenset({"-y", "--yes"})
# Flags of npx/npm exec and uvx/uv that change WHAT runs or WHERE it comes from.
LAUNCHER_FLAGS: frozenset[str] = frozenset(
    {
        "--package", "-p", "--call", "-c", "--prefix", "--registry", "--node-options",
        "--userconfig", "--globalconfig", "--cache", "--workspace", "--workspaces", "-w",
        "--script-shell", "--from", "--with", "--with-editable", "--with-requirements",
        "--index", "--index-url", "--extra-index-url", "--default-index", "--find-links", "-f",
        "--python", "--directory", "--project", "--config-file", "--no-config", "--offline",
        "--refresh", "--reinstall", "--upgrade",
    }
)  # fmt: skip
SHELL_METACHARACTERS = frozenset(";&|$`<>(){}\\'\"\n\r\t")
NPM_NAME_RE = re.compile(r"(@[a-z0-9~-][a-z0-9._~-]*/)?[a-z0-9~-][a-z0-9._~-]*")
NPM_VERSION_RE = re.compile(r"[A-Za-z0-9.^~=<>*+-]+")
PYPI_NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
PEP440_CLAUSE_RE = re.compile(r"(===|==|!=|~=|>=|<=|<|>)[A-Za-z0-9.*+!]+")
LOCAL_COMMAND_RE = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._/+-]*")
_CONTROL_CHARACTERS = frozenset(chr(i) for i in (*range(0x20), 0x7F)) - frozenset("\t\n\r")


def check_expert_key(key: str) -> str:
    """Return `key` if it is a valid expert key (also used for delegates)."""
    if len(key) > MAX_KEY_LENGTH or not EXPERT_KEY_RE.fullmatch(key):
        raise ValueError(
            f"expert name {key!r} breaks the naming rule: lowercase letters, digits, '-' and "
            "'_', starting with a letter or digit, optional '@scope/', at most 214 characters"
        )
    return key


def check_skill_key(key: str) -> str:
    """Return `key` if it is a valid skill key."""
    if len(key) > MAX_KEY_LENGTH or not SKILL_KEY_RE.fullmatch(key):
        raise ValueError(
            f"skill name {key!r} breaks the naming rule: lowercase letters, digits, '.', '-' "
            "and '_', starting with a letter or digit, or a scoped name like '@scope/name'"
        )
    return key


def check_tool_name(name: str) -> str:
    """Return `name` if it is a plausible MCP tool name (pick, omit, interactive tools)."""
    if not TOOL_NAME_RE.fullmatch(name):
        raise ValueError(
            f"tool name {name!r} must be 1-128 letters, digits, '_', '-' or '.', "
            "not starting with '-' or '.'"
        )
    return name


def check_tag(tag: str) -> str:
    """Return `tag` if it is a valid expert tag."""
    if not TAG_RE.fullmatch(tag):
        raise ValueError(f"tag {tag!r} must be 1-64 lowercase letters, digits, '-' or '_'")
    return tag


def check_semver(version: str) -> str:
    """Return `version` if it is a full semantic version (MAJOR.MINOR.PATCH)."""
    if not SEMVER_RE.fullmatch(version):
        raise ValueError(
            f"version {version!r} is not semantic versioning: write MAJOR.MINOR.PATCH, e.g. '1.0.0'"
        )
    return version


def is_protected_env_name(name: str) -> bool:
    """Return True if a skill may never receive the variable `name` through requiredEnv."""
    upper = name.upper()
    return upper in PROTECTED_ENV_NAMES or upper.startswith(PROTECTED_ENV_PREFIXES)


def check_env_name(name: str) -> str:
    """Return `name` if it is a valid, unprotected environment variable name."""
    if not ENV_NAME_RE.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid environment variable name "
            "(letters, digits and '_', not starting with a digit)"
        )
    if is_protected_env_name(name):
        raise ValueError(
            f"{name!r} is a protected variable: the sandbox sets it itself (loader, "
            "interpreter, package manager, TLS trust or proxy settings), a skill cannot "
            "require it"
        )
    return name


def check_plain_text(value: str) -> str:
    """Return `value` if it holds no NUL or control characters other than tab and newline."""
    if any(c in _CONTROL_CHARACTERS for c in value):
        raise ValueError("contains control characters")
    return value


def check_https_url(url: str) -> str:
    """Return `url` if it is an absolute https URL with a host."""
    check_plain_text(url)
    parts = _split(url)
    if parts.scheme != "https" or not parts.netloc:
        raise ValueError(f"{url!r} must be an https:// URL (plain http is never allowed)")
    return url


def check_sse_endpoint(url: str) -> str:
    """Return `url` if it is a public https URL on port 443 whose host passes the host rules.

    No DNS lookup: a private address can only be refused when it is written as an IP
    literal, which the host rules refuse in every notation; names are checked by the proxy.
    """
    check_https_url(url)
    parts = _split(url)
    if "@" in parts.netloc:
        raise ValueError(f"SSE endpoint {url!r} must not carry user information ('user@')")
    host, port = _split_netloc(parts.netloc)
    if port not in {"", "443"}:
        raise ValueError(f"SSE endpoint {url!r} must use port 443 (the proxy allows no other)")
    try:
        canonicalise_host(host)
    except HostRejected as exc:
        raise ValueError(f"SSE endpoint host is not a public host name: {exc.message}") from exc
    return url


def endpoint_host(url: str) -> str:
    """Return the canonical host of a checked SSE endpoint."""
    return canonicalise_host(_split_netloc(urlsplit(url).netloc)[0])


def check_input_json_schema(text: str) -> str:
    """Return `text` if it parses as a JSON object that is a plausible tool input schema."""
    try:
        schema = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"inputJsonSchema is not valid JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise ValueError(  # noqa: TRY004 - pydantic turns only ValueError into an issue
            "inputJsonSchema must be a JSON object (a JSON Schema)"
        )
    if schema.get("type") != "object":
        raise ValueError('inputJsonSchema must describe an object: "type": "object"')
    properties = schema.get("properties", {})
    if not isinstance(properties, dict) or not all(
        isinstance(p, dict | bool) for p in properties.values()
    ):
        raise ValueError('inputJsonSchema "properties" must map names to schemas')
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ValueError('inputJsonSchema "required" must be a list of property names')
    return text


class ItemError(ValueError):
    """A rule broken by one item of an array; `index` locates it (`args[2]`)."""

    def __init__(self, index: int, message: str) -> None:
        """Keep the index so the report can extend the TOML path."""
        super().__init__(message)
        self.index = index


def check_arg_syntax(arg: str) -> str:
    """Return `arg` if it holds no shell syntax or line break (every skill, local ones too)."""
    check_plain_text(arg)
    bad = sorted(set(arg) & SHELL_METACHARACTERS)
    if bad:
        raise ValueError(
            f"argument {arg!r} contains shell syntax {''.join(bad)!r}; launch arguments are "
            "plain words (no shell runs them, and a reviewer must read them literally)"
        )
    return arg


def check_launcher_flags(args: tuple[str, ...]) -> tuple[str, ...]:
    """Return `args` if none is an npx/uvx flag that changes what runs or where it comes from.

    Raises:
        ItemError: the first offending argument, with its index.

    """
    for index, arg in enumerate(args):
        if arg.split("=", 1)[0] in LAUNCHER_FLAGS:
            raise ItemError(
                index,
                f"argument {arg!r} is an npx/uvx flag that changes what is executed or where it "
                "comes from; name the package in packageName instead",
            )
    return args


def parse_npm_spec(spec: str) -> tuple[str, str]:
    """Split an npm package spec `[@scope/]name[@version]` into (name, version spec)."""
    at = spec.find("@", 1)
    name, version = (spec, "") if at < 0 else (spec[:at], spec[at + 1 :])
    if spec.startswith("-") or len(name) > MAX_KEY_LENGTH or not NPM_NAME_RE.fullmatch(name):
        raise ValueError(
            f"{spec!r} is not an npm package spec: '[@scope/]name[@version]' in lowercase "
            "letters, digits, '-', '.', '_' and '~', not starting with '-'"
        )
    if (at >= 0 and not version) or (version and not NPM_VERSION_RE.fullmatch(version)):
        raise ValueError(
            f"version {version!r} of {name!r} is not a registry version or range "
            "(no URLs, paths, git or alias specs)"
        )
    return name, version


def parse_pypi_spec(spec: str) -> tuple[str, str]:
    """Split a PyPI spec `name[==1.2|>=1,<2|@1.2]` into (name, PEP 440 specifier)."""
    match = PYPI_NAME_RE.match(spec)
    name = match.group(0) if match and not spec.startswith("-") else ""
    rest = spec[len(name) :]
    if not name:
        raise ValueError(
            f"{spec!r} is not a PyPI package spec: a name of letters, digits, '.', '-', '_', "
            "optionally followed by a PEP 440 specifier such as '==1.2' or '>=1,<2'"
        )
    if rest.startswith("@"):
        rest = "==" + rest[1:]
    if rest and not all(PEP440_CLAUSE_RE.fullmatch(clause) for clause in rest.split(",")):
        raise ValueError(
            f"{rest!r} in {spec!r} is not a PEP 440 version specifier (e.g. '==1.2', '>=1,<2')"
        )
    return name, rest


def check_local_command(command: str) -> str:
    """Return `command` if it is a program name or path with no shell syntax."""
    if not LOCAL_COMMAND_RE.fullmatch(command):
        raise ValueError(
            f"command {command!r} must be a program name or path (letters, digits, '.', '_', "
            "'/', '+', '-'), with no spaces, shell syntax or leading '-'"
        )
    return command


def _split(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a valid URL: {exc}") from exc


def _split_netloc(netloc: str) -> tuple[str, str]:
    if ":" in netloc and not netloc.endswith("]"):
        host, _, port = netloc.rpartition(":")
        return host, port
    return netloc, ""
