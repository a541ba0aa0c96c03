"""A readable diff between a skill's pinned tool definitions and the ones it lists now."""

from __future__ import annotations

import difflib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from perstack_sandbox.lock._format import JsonObject


def _by_name(tools: Sequence[JsonObject]) -> dict[str, JsonObject]:
    return {str(tool.get("name")): tool for tool in tools}


def _lines(tool: JsonObject) -> list[str]:
    return json.dumps(tool, sort_keys=True, indent=2, ensure_ascii=False).splitlines()


def tools_diff(skill: str, locked: Sequence[JsonObject], listed: Sequence[JsonObject]) -> str:
    """Return a unified diff per changed tool ('' when the definitions are the same).

    Tools are matched by name; one added or removed shows whole, one changed shows only its
    changed lines with context.
    """
    before, after = _by_name(locked), _by_name(listed)
    parts: list[str] = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        label = f"{skill}/{name}"
        diff = difflib.unified_diff(
            _lines(old) if old is not None else [],
            _lines(new) if new is not None else [],
            fromfile=f"locked {label}" if old is not None else "/dev/null",
            tofile=f"listed {label}" if new is not None else "/dev/null",
            lineterm="",
        )
        parts.append("\n".join(diff))
    return "\n".join(parts)
