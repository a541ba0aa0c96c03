"""Sealed secrets, the orchestrator's half: placeholders for the skills, values for the proxy.

With sealing (`--seal-secrets`, `open_run(seal_secrets=True)`), each skill's environment gets
a per-run random placeholder for every requiredEnv value, distinct per skill and variable. A
placeholder is at least `MIN_PLACEHOLDER_LENGTH` long whatever its value (so it never matches
by chance), and exactly as long as a value that long or longer (so masking that value in a
sized response body keeps its Content-Length). The real values go to the proxy only, over its
control channel (`message`). See docs/architecture.md, decisions 37 and 69.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from perstack_sandbox.plan._secrets import Secret, SkillSecrets

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

_ALPHABET: Final = string.ascii_letters + string.digits
# 16 letters or digits: 95 random bits. The proxy's MIN_MASKED_BYTES (proxy/_seal.py) is the
# same number: it refuses a shorter placeholder and masks only values at least this long.
MIN_PLACEHOLDER_LENGTH: Final = 16


@dataclass(frozen=True, slots=True)
class SealedSecrets:
    """Each skill's placeholders (its environment) and the real values behind them."""

    placeholders: Mapping[str, SkillSecrets]
    real: Mapping[str, SkillSecrets]
    passthrough: tuple[str, ...] = ()

    def message(self) -> SealMessage:
        """Return the proxy's `seal` message (this reveals every value: stdin of one exec)."""
        skills = {
            skill: {
                name: {
                    "placeholder": self.placeholders[skill].values[name].reveal(),
                    "value": value.reveal(),
                }
                for name, value in secrets_of.values.items()
            }
            for skill, secrets_of in self.real.items()
        }
        document = {"op": "seal", "skills": skills, "passthrough": list(self.passthrough)}
        return SealMessage(json.dumps(document).encode("utf-8"))


class SealMessage(bytes):
    """The seal message's bytes; its repr hides them (a traceback's locals print reprs)."""

    __slots__ = ()

    def __repr__(self) -> str:
        """Show a placeholder, never the values."""
        return "SealMessage(***)"


def placeholder_for(value: str, taken: set[str]) -> str:
    """Return a fresh random ASCII placeholder for `value` ("" for "").

    It is as long as `value`'s UTF-8, and never shorter than MIN_PLACEHOLDER_LENGTH; it is
    neither in nor around any placeholder in `taken` (so one never matches inside another).
    """
    if not value:
        return ""
    length = max(len(value.encode("utf-8")), MIN_PLACEHOLDER_LENGTH)
    while True:
        candidate = "".join(secrets.choice(_ALPHABET) for _ in range(length))
        if candidate != value and not any(
            candidate in other or other in candidate for other in taken
        ):
            taken.add(candidate)
            return candidate


def seal_secrets(
    resolved: Mapping[str, SkillSecrets], passthrough: Iterable[str] = ()
) -> SealedSecrets:
    """Give every value of every skill its own placeholder."""
    taken: set[str] = set()
    placeholders = {
        skill: SkillSecrets(
            skill=skill,
            values={
                name: Secret(placeholder_for(value.reveal(), taken))
                for name, value in found.values.items()
            },
        )
        for skill, found in resolved.items()
    }
    return SealedSecrets(placeholders, dict(resolved), tuple(sorted(set(passthrough))))
