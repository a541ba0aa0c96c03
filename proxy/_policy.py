"""The policy file: which hosts a sandbox may reach, and the proxy's limits.

```json
{"allowedDomains": ["api.example.com", "*.example.org"],
 "skills": {"<token>": {"skill": "search", "allowedDomains": ["api.example.com"]}},
 "sandboxId": "abc123",
 "testAllowCidrs": [],
 "testHosts": {},
 "testUpstreamCa": "",
 "limits": {"maxConnections": 1024, "connectTimeout": 10, "maxConnectionsPerSkill": 256}}
```
Unknown keys are ignored so that the engine can grow the file; every known key is checked.

With ``skills``, every CONNECT must carry ``Proxy-Authorization: Basic`` with one of the
tokens as its password, and is held to that skill's own ``allowedDomains``; the top-level
list is then unused. Without ``skills``, the top-level list applies to every client, unless
``"requireGrant": true``: then a client without a granted credential reaches nothing. A warm
sandbox's proxy starts that way, and its skills' credentials arrive later over the control
channel (``_control``), as a grant: ``{"<skill>": {"token": "...", "allowedDomains": [...]}}``.

``testAllowCidrs``, ``testHosts`` (name -> address, answered before DNS) and
``testUpstreamCa`` (a PEM trusted upstream on the sealed path) exist for the test suites
only: the orchestrator sets them only when a test passes them to the engine.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ._netrules import AddressRules, IPNetwork
from .hosts import HostRejected, canonicalise_host

if TYPE_CHECKING:
    from pathlib import Path


class PolicyError(ValueError):
    """The policy file is missing, not JSON, or holds a value of the wrong shape."""


@dataclass(frozen=True)
class Limits:
    """Resource limits; times are in seconds. The JSON keys are the camelCase names."""

    # Enough for every skill of one expert with room to spare; each costs two sockets.
    max_connections: int = 1024
    # A CONNECT request and its headers fit in far less; more is an attack or a mistake.
    max_header_bytes: int = 8192
    # A client that cannot send its headers in this time is treated as slowloris.
    header_timeout: float = 10.0
    resolve_timeout: float = 5.0
    connect_timeout: float = 10.0
    # A TLS client sends its ClientHello right after the 200; this bounds a silent one.
    client_hello_timeout: float = 10.0
    # Large post-quantum key shares still fit well below this.
    max_client_hello_bytes: int = 65536
    # A tunnel with no bytes either way for this long is closed.
    idle_timeout: float = 300.0
    # Connections whose request head has not arrived (no skill known yet); when full, the
    # oldest is evicted (docs/architecture.md, decision 40). Half the cap: a burst of clients
    # connecting at once (a test opens 500) must not evict each other.
    max_unauthenticated: int = 512
    # One skill's open connections (cut further so that all skills fit under maxConnections),
    # and how many of them may be resolving, dialling or waiting for their ClientHello.
    max_connections_per_skill: int = 256
    max_pending_per_skill: int = 32


_LIMIT_KEYS = {
    "".join(part.capitalize() if i else part for i, part in enumerate(f.name.split("_"))): f
    for f in fields(Limits)
}


@dataclass(frozen=True)
class SkillGrant:
    """One skill's credential (a secret: never logged) and the hosts that skill may reach."""

    skill: str
    allowed_domains: tuple[str, ...]
    token: bytes = field(repr=False)


@dataclass(frozen=True)
class Policy:
    """A parsed, validated policy."""

    allowed_domains: tuple[str, ...] = ()
    sandbox_id: str = ""
    addresses: AddressRules = field(default_factory=AddressRules)
    limits: Limits = field(default_factory=Limits)
    skills: tuple[SkillGrant, ...] = ()
    test_hosts: dict[str, str] = field(default_factory=dict)
    test_upstream_ca: str = ""
    # True: only granted credentials reach anything, even while no grant is installed.
    require_grant: bool = False

    def grant_for(self, token: bytes) -> SkillGrant | None:
        """Return the skill whose token is ``token`` (every token compared, in constant time)."""
        found = None
        for grant in self.skills:  # no early exit: the time does not tell which token matched
            if hmac.compare_digest(grant.token, token):
                found = grant
        return found


def load_policy(path: Path) -> Policy:
    """Read and validate the policy file at ``path``.

    Raises:
        PolicyError: the file cannot be read, is not a JSON object, or a known key is invalid.

    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyError(f"cannot read policy {path}: {exc}") from exc
    return parse_policy(document)


def parse_policy(document: object) -> Policy:
    """Validate a decoded policy document.

    Raises:
        PolicyError: the document is not an object or a known key is invalid.

    """
    if not isinstance(document, dict):
        raise PolicyError("policy must be a JSON object")
    domains = _string_list(document, "allowedDomains")
    sandbox_id = document.get("sandboxId", "")
    if not isinstance(sandbox_id, str):
        raise PolicyError("sandboxId must be a string")
    require_grant = document.get("requireGrant", False)
    if not isinstance(require_grant, bool):
        raise PolicyError("requireGrant must be true or false")
    return Policy(
        allowed_domains=tuple(_check_pattern(pattern) for pattern in domains),
        sandbox_id=sandbox_id,
        addresses=AddressRules(test_allow=_cidrs(_string_list(document, "testAllowCidrs"))),
        limits=_limits(document.get("limits", {})),
        skills=_skills(document.get("skills", {})),
        test_hosts=_test_hosts(document.get("testHosts", {})),
        test_upstream_ca=_string(document, "testUpstreamCa"),
        require_grant=require_grant,
    )


def _test_hosts(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise PolicyError("testHosts must map names to addresses")
    return dict(value)


def _string(document: dict[str, Any], key: str) -> str:
    value = document.get(key, "")
    if not isinstance(value, str):
        raise PolicyError(f"{key} must be a string")
    return value


def _skills(value: object) -> tuple[SkillGrant, ...]:
    if not isinstance(value, dict):
        raise PolicyError("skills must be an object")
    grants = []
    for token, entry in value.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("skill"), str):
            raise PolicyError("each skills entry must be an object with a string 'skill'")
        grants.append(_grant(entry["skill"], token, entry))
    return tuple(grants)


def parse_grant(value: object) -> tuple[SkillGrant, ...]:
    """Validate a grant: each skill's name mapped to its token and its own allowedDomains.

    Raises:
        PolicyError: not an object of objects, a token is empty or not printable ASCII, two
            skills share a token, or a domain pattern is invalid.

    """
    if not isinstance(value, dict):
        raise PolicyError("skills must be an object")
    grants = []
    for skill, entry in value.items():
        if not skill or not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            raise PolicyError("each skill must map to an object with a string 'token'")
        grants.append(_grant(skill, entry["token"], entry))
    if len({grant.token for grant in grants}) != len(grants):
        raise PolicyError("two skills share a token")
    return tuple(grants)


def _grant(skill: str, token: str, entry: dict[str, Any]) -> SkillGrant:
    if not token or not token.isascii() or not token.isprintable():
        raise PolicyError("skill tokens must be non-empty printable ASCII")
    domains = _string_list(entry, "allowedDomains")
    return SkillGrant(
        skill=skill,
        allowed_domains=tuple(_check_pattern(pattern) for pattern in domains),
        token=token.encode("ascii"),
    )


def _string_list(document: dict[str, Any], key: str) -> list[str]:
    value = document.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PolicyError(f"{key} must be a list of strings")
    return value


def _check_pattern(pattern: str) -> str:
    """Accept a pattern only if it is already in canonical form (the config made it so)."""
    bare = pattern.removeprefix("*.")
    try:
        canonical = canonicalise_host(bare)
    except HostRejected as exc:
        raise PolicyError(f"allowedDomains entry {pattern!r} is invalid: {exc}") from exc
    if canonical != bare:
        raise PolicyError(f"allowedDomains entry {pattern!r} is not canonical ({canonical!r})")
    return pattern


def _cidrs(values: list[str]) -> tuple[IPNetwork, ...]:
    try:
        return tuple(ipaddress.ip_network(value, strict=True) for value in values)
    except ValueError as exc:
        raise PolicyError(f"testAllowCidrs: {exc}") from exc


def _limits(value: object) -> Limits:
    if not isinstance(value, dict):
        raise PolicyError("limits must be an object")
    chosen: dict[str, Any] = {}
    for key, item in value.items():
        spec = _LIMIT_KEYS.get(key)
        if spec is not None:
            chosen[spec.name] = _limit_value(key, item, whole=spec.type == "int")
    return Limits(**chosen)


def _limit_value(key: str, item: object, *, whole: bool) -> float:
    if isinstance(item, bool) or not isinstance(item, int | float):
        raise PolicyError(f"limits.{key} must be a number")
    if whole and not isinstance(item, int):
        raise PolicyError(f"limits.{key} must be a whole number")
    if not math.isfinite(item) or item <= 0:
        raise PolicyError(f"limits.{key} must be positive")
    return item
