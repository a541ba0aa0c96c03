"""Sealed secrets: which tunnels are terminated, and the substitution rules (decision 37).

The orchestrator sends the ``seal`` message over the control channel (proxy/_control.py)::

    {"op": "seal",
     "skills": {"<skill>": {"<VAR>": {"placeholder": "...", "value": "..."}}},
     "passthrough": ["pinned.example.com"]}

From then on a CONNECT from a skill that has sealed values, to one of its own allowed hosts
not listed in ``passthrough``, is terminated with the run's CA (proxy/_sealed.py). In the
request line and headers of such a tunnel that skill's own placeholders become the real
values; another skill's placeholder refuses the request. In response heads and bodies every
real value becomes its placeholder again. Values are held here only, never logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from .hosts import match_host

if TYPE_CHECKING:
    from ._ca import RunCA, UpstreamContext
    from ._policy import Policy, SkillGrant

# A seal message far larger than this is a mistake: a few hundred variables fit well below.
MAX_VARIABLES: Final = 256


class SealError(ValueError):
    """The seal message is malformed (the reason names keys, never values)."""


@dataclass(frozen=True)
class SealedValue:
    """One variable of one skill: its name, placeholder and real value (never printed)."""

    variable: str
    placeholder: bytes
    value: bytes = field(repr=False)


@dataclass
class SealState:
    """The run's sealed values and CA; empty (nothing terminated) until a seal message."""

    by_skill: dict[str, tuple[SealedValue, ...]] = field(default_factory=dict)
    passthrough: frozenset[str] = frozenset()
    ca: RunCA | None = None
    upstream: UpstreamContext | None = None

    def applies(self, grant: SkillGrant | None, host: str) -> bool:
        """Tell whether the tunnel of ``grant`` to ``host`` is to be terminated."""
        return (
            self.ca is not None
            and grant is not None
            and bool(self.by_skill.get(grant.skill))
            and host not in self.passthrough
        )

    def own(self, skill: str) -> tuple[SealedValue, ...]:
        """Return ``skill``'s sealed values."""
        return self.by_skill.get(skill, ())

    def foreign(self, skill: str) -> list[tuple[str, SealedValue]]:
        """Return every other skill's sealed values, with the skill that owns each."""
        return [
            (owner, sealed)
            for owner, values in self.by_skill.items()
            if owner != skill
            for sealed in values
        ]

    def every_value(self) -> tuple[SealedValue, ...]:
        """Return the values of every skill (all are masked in responses)."""
        return tuple(sealed for values in self.by_skill.values() for sealed in values)


def seal(state: SealState, policy: Policy, document: dict[str, object], test_ca: str) -> str:
    """Apply a seal message to ``state``; return the new CA's certificate (PEM).

    A run is sealed once: a second message is refused, so a placeholder never changes meaning.

    Raises:
        SealError: the message is malformed, names an unknown skill, or the run is sealed.

    """
    if state.ca is not None:
        raise SealError("this run is sealed already")
    by_skill = _parse_skills(document.get("skills"), {grant.skill for grant in policy.skills})
    passthrough = document.get("passthrough", [])
    if not isinstance(passthrough, list) or not all(isinstance(h, str) for h in passthrough):
        raise SealError("passthrough must be a list of host names")
    state.passthrough = frozenset(passthrough)
    domains = [
        domain
        for grant in policy.skills
        if by_skill.get(grant.skill)
        for domain in grant.allowed_domains
        if match_host(domain.removeprefix("*."), list(passthrough)) is None
    ]
    # Loaded on the first seal only: a proxy that seals nothing never imports cryptography
    # (10 MB of its idle memory).
    from ._ca import RunCA, upstream_context  # noqa: PLC0415

    state.ca = RunCA(policy.sandbox_id, domains)
    state.upstream = upstream_context(test_ca)
    state.by_skill = by_skill
    return state.ca.pem


def _parse_skills(value: object, known: set[str]) -> dict[str, tuple[SealedValue, ...]]:
    if not isinstance(value, dict):
        raise SealError("skills must be an object")
    parsed: dict[str, tuple[SealedValue, ...]] = {}
    placeholders: set[bytes] = set()
    for skill, variables in value.items():
        if skill not in known:
            raise SealError(f"unknown skill {skill!r}")
        if not isinstance(variables, dict) or len(variables) > MAX_VARIABLES:
            raise SealError(f"skills.{skill} must be an object of at most {MAX_VARIABLES}")
        entries = []
        for name, entry in variables.items():
            sealed = _sealed_value(skill, name, entry)
            if sealed.placeholder in placeholders:
                raise SealError(f"skills.{skill}.{name}: placeholder used twice")
            placeholders.add(sealed.placeholder)
            if sealed.value:  # an empty value has nothing to hide (and would match anywhere)
                entries.append(sealed)
        parsed[skill] = tuple(entries)
    return parsed


def _sealed_value(skill: str, name: str, entry: object) -> SealedValue:
    where = f"skills.{skill}.{name}"
    if not isinstance(entry, dict):
        raise SealError(f"{where} must be an object")
    placeholder, value = entry.get("placeholder"), entry.get("value")
    if not isinstance(placeholder, str) or not isinstance(value, str):
        raise SealError(f"{where} needs string placeholder and value")
    if value and (len(placeholder) != len(value.encode("utf-8")) or not placeholder.isascii()):
        # Same length: substitution never changes a Content-Length (decision 37).
        raise SealError(f"{where}: the placeholder must be ASCII and as long as the value")
    if any(char in value for char in "\r\n"):
        raise SealError(f"{where}: a value with a line break cannot go into a header")
    return SealedValue(name, placeholder.encode("ascii"), value.encode("utf-8"))


def substitute(head: bytes, values: tuple[SealedValue, ...]) -> tuple[bytes, list[str]]:
    """Replace each placeholder in a request head by its value; return it and the names used."""
    used = []
    for sealed in values:
        if sealed.placeholder in head:
            head = head.replace(sealed.placeholder, sealed.value)
            used.append(sealed.variable)
    return head, used


class Masker:
    """Replaces real values by their placeholders in a stream cut into arbitrary pieces.

    The last ``longest - 1`` bytes are held back until more arrive (or :meth:`flush`), so a
    value split across two reads is still found. Replacement keeps the length (decision 37).
    """

    def __init__(self, values: tuple[SealedValue, ...]) -> None:
        """Mask ``values``."""
        self._values = values
        self._keep = max((len(sealed.value) for sealed in values), default=1) - 1
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        """Return what may be passed on of ``data`` (masked); hold back a possible prefix."""
        buffer = mask(self._held + data, self._values)
        cut = max(len(buffer) - self._keep, 0)
        self._held = buffer[cut:]
        return buffer[:cut]

    def flush(self) -> bytes:
        """Return the bytes still held back (the stream has ended)."""
        held, self._held = self._held, b""
        return held


def mask(data: bytes, values: tuple[SealedValue, ...]) -> bytes:
    """Replace every real value in ``data`` by its placeholder."""
    for sealed in values:
        if sealed.value in data:
            data = data.replace(sealed.value, sealed.placeholder)
    return data
