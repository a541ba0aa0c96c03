"""Sealed secrets: which tunnels are terminated, and the substitution rules (decision 37).

The orchestrator sends the ``seal`` message over the control channel (proxy/_control.py)::

    {"op": "seal",
     "skills": {"<skill>": {"<VAR>": {"placeholder": "...", "value": "..."}}},
     "passthrough": ["pinned.example.com"]}

From then on a CONNECT from a skill that has sealed values, to one of its own allowed hosts
not listed in ``passthrough``, is terminated with the run's CA (proxy/_sealed.py). In the
request line and headers of such a tunnel that skill's own placeholders become the real
values; another skill's placeholder refuses the request. In response heads and bodies every
real value of at least ``MIN_MASKED_BYTES`` becomes its placeholder again (a shorter one would
mangle unrelated text). Both replacements are one pass over the data, so what one replacement
wrote is never scanned again (decision 69). Values are held here only, never logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from .hosts import match_host

if TYPE_CHECKING:
    from ._ca import RunCA, UpstreamContext
    from ._policy import Policy, SkillGrant

# A seal message far larger than this is a mistake: a few hundred variables fit well below.
MAX_VARIABLES: Final = 256
# Every placeholder is at least this long, whatever its value's length, so that it never
# matches by chance; a value this long or longer has a placeholder exactly as long, so that
# masking it in a sized response body keeps the Content-Length. A shorter value (DEBUG=1) is
# not masked in responses: its characters occur everywhere (decision 69). The orchestrator's
# plan/_sealing.py makes placeholders by the same number.
MIN_MASKED_BYTES: Final = 16


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
    _placeholders: Replacer | None = field(default=None, repr=False)
    _masker: Replacer | None = field(default=None, repr=False)

    @property
    def placeholders(self) -> Replacer:
        """Every placeholder of the run, each found as its value (made on first use)."""
        if self._placeholders is None:
            self._placeholders = Replacer(
                {sealed.placeholder: sealed.value for sealed in self.every_value()}
            )
        return self._placeholders

    @property
    def masking(self) -> Replacer:
        """Every value masked in responses (at least MIN_MASKED_BYTES), as its placeholder."""
        if self._masker is None:
            self._masker = Replacer(
                {
                    sealed.value: sealed.placeholder
                    for sealed in self.every_value()
                    if len(sealed.value) >= MIN_MASKED_BYTES
                }
            )
        return self._masker

    def applies(self, grant: SkillGrant | None, host: str) -> bool:
        """Tell whether the tunnel of ``grant`` to ``host`` is to be terminated."""
        return (
            self.ca is not None
            and grant is not None
            and bool(self.by_skill.get(grant.skill))
            and host not in self.passthrough
        )

    def every_value(self) -> tuple[SealedValue, ...]:
        """Return the sealed values of every skill."""
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
    state._placeholders = state._masker = None  # noqa: SLF001 - made again from by_skill
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
            if not sealed.value:  # nothing to hide, and its "" placeholder would match anywhere
                continue
            if sealed.placeholder in placeholders:
                raise SealError(f"skills.{skill}.{name}: placeholder used twice")
            placeholders.add(sealed.placeholder)
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
    size = len(value.encode("utf-8"))
    if value and not _placeholder_fits(placeholder, size):
        raise SealError(
            f"{where}: the placeholder must be ASCII, at least {MIN_MASKED_BYTES} long,"
            " and as long as a value of that length or more"
        )
    if any(char in value for char in "\r\n"):
        raise SealError(f"{where}: a value with a line break cannot go into a header")
    return SealedValue(name, placeholder.encode("ascii"), value.encode("utf-8"))


def _placeholder_fits(placeholder: str, size: int) -> bool:
    """Tell whether ``placeholder`` may stand for a value of ``size`` bytes (decision 69)."""
    if not placeholder.isascii() or len(placeholder) < MIN_MASKED_BYTES:
        return False
    # A masked value and its placeholder are as long: a masked sized body keeps its length.
    return size < MIN_MASKED_BYTES or len(placeholder) == size


class Replacer:
    """Replaces each of some byte strings by its own replacement, in one pass.

    One alternation, longest first: where two could match, the longer wins, and a replacement
    is never scanned again (so a real value just put in, or a short one inside it, is left
    alone).
    """

    def __init__(self, table: dict[bytes, bytes]) -> None:
        """Replace each key of ``table`` by its value."""
        self.table = table
        self.longest = max(map(len, table), default=0)
        ordered = sorted(table, key=len, reverse=True)
        self.pattern = re.compile(b"|".join(map(re.escape, ordered))) if ordered else None

    def present(self, data: bytes) -> bool:
        """Tell whether any key occurs in ``data``.

        A substring search per key is C speed; the alternation is several times slower with
        many keys, so it runs only over data that holds one (almost no response body does).
        """
        return any(key in data for key in self.table)

    def found(self, data: bytes) -> list[bytes]:
        """Return the keys found in ``data``, in order (non-overlapping, as replaced)."""
        if self.pattern is None or not self.present(data):
            return []
        return [match.group() for match in self.pattern.finditer(data)]

    def replace(self, data: bytes) -> bytes:
        """Return ``data`` with every key replaced."""
        if self.pattern is None or not self.present(data):
            return data
        return self.pattern.sub(lambda match: self.table[match.group()], data)


def substitute(head: bytes, state: SealState, skill: str) -> tuple[bytes, list[str], str | None]:
    """Replace ``skill``'s placeholders in a request head by their values, in one pass.

    Returns the head, the variables used, and the skill owning a foreign placeholder found in
    it (None when there is none: the head is then fit to forward).
    """
    owners = {
        sealed.placeholder: (owner, sealed.variable)
        for owner, values in state.by_skill.items()
        for sealed in values
    }
    used: list[str] = []
    for placeholder in state.placeholders.found(head):
        owner, variable = owners[placeholder]
        if owner != skill:
            return head, [], owner
        if variable not in used:
            used.append(variable)
    if not used:
        return head, [], None
    return state.placeholders.replace(head), used, None


class Masker:
    """Replaces real values by their placeholders in a stream cut into arbitrary pieces.

    The last ``longest - 1`` bytes are held back, unscanned, until more arrive (or
    :meth:`flush`), so a value split across two reads is still found; what was emitted is
    never scanned again. Replacement keeps the length (decision 69).
    """

    def __init__(self, replacer: Replacer) -> None:
        """Mask what ``replacer`` finds (``SealState.masking``)."""
        self._replacer = replacer
        self._keep = max(replacer.longest - 1, 0)
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        """Return what may be passed on of ``data`` (masked); hold back a possible prefix."""
        buffer = self._held + data
        pattern = self._replacer.pattern
        cut = max(len(buffer) - self._keep, 0)
        if pattern is None or not self._replacer.present(buffer):
            self._held = buffer[cut:]
            return buffer[:cut]
        out: list[bytes] = []
        position = 0
        # A match starting before the cut is whole: at least `longest` bytes follow its start.
        for match in pattern.finditer(buffer):
            if match.start() >= cut:
                break
            out += (buffer[position : match.start()], self._replacer.table[match.group()])
            position = match.end()
        end = max(cut, position)
        out.append(buffer[position:end])
        self._held = buffer[end:]
        return b"".join(out)

    def flush(self) -> bytes:
        """Return the bytes still held back, masked (the stream has ended)."""
        held, self._held = self._held, b""
        return self._replacer.replace(held)


def mask(data: bytes, replacer: Replacer) -> bytes:
    """Replace every real value in ``data`` by its placeholder, in one pass."""
    return replacer.replace(data)
