"""`SkillSpec`: what the gateway knows of one skill before it starts, and its pick/omit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    import mcp_types as types


@dataclass(frozen=True, slots=True)
class SkillSpec:
    """What the gateway needs to know about one stdio skill."""

    name: str
    pick: tuple[str, ...] = ()
    omit: tuple[str, ...] = ()
    lazy_init: bool = False
    timeout_s: float = 60.0

    def keeps(self, *names: str | None) -> bool:
        """Whether pick/omit keep an item known by any of `names` (a name, a URI...)."""
        given = {name for name in names if name}
        return (not self.pick or bool(given & set(self.pick))) and not given & set(self.omit)


def filter_tools(
    tools: Sequence[types.Tool], pick: Sequence[str], omit: Sequence[str]
) -> list[types.Tool]:
    """Apply pick (keep only these, when given) then omit (drop these)."""
    kept = [tool for tool in tools if not pick or tool.name in pick]
    return [tool for tool in kept if tool.name not in omit]
