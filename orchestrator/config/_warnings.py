"""Warnings about a valid perstack.toml: what Perstack accepts but a reviewer should see.

- a file with no Expert (nothing can be planned or run);
- a skill with both `pick` and `omit`: it keeps the tools `pick` names, then drops those `omit`
  names (Perstack's own reference sets both on one skill);
- an `allowedDomains` wildcard over a shared suffix (the private section of the public suffix
  list, such as `*.googleapis.com`): every tenant registered under it is reachable.

`validate --strict` turns every warning into an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from perstack_sandbox.config._report import key_path
from perstack_sandbox.errors import ConfigIssue
from perstack_sandbox_proxy.hosts import shared_suffix

if TYPE_CHECKING:
    from collections.abc import Iterator

    from perstack_sandbox.config._model import PerstackConfig, Skill


def config_warnings(config: PerstackConfig) -> list[ConfigIssue]:
    """Return the warnings of a config that validated, in document order."""
    if not config.experts:
        return [
            ConfigIssue(
                "experts",
                'no Expert is defined: add an [experts."name"] table with an instruction '
                "(nothing can be planned or run)",
                is_warning=True,
            )
        ]
    issues: list[ConfigIssue] = []
    for expert_key, expert in config.experts.items():
        for skill_key, skill in expert.skills.items():
            where = key_path("experts", expert_key, "skills", skill_key)
            issues += _skill_warnings(where, skill)
        search = expert.provider_tool_options and expert.provider_tool_options.web_search
        if search:
            where = key_path("experts", expert_key, "providerToolOptions", "webSearch")
            issues += _wildcard_warnings(where, search.allowed_domains)
    return issues


def _skill_warnings(where: str, skill: Skill) -> Iterator[ConfigIssue]:
    if skill.type == "interactiveSkill":
        return
    if skill.pick and skill.omit:
        yield ConfigIssue(where, _pick_and_omit(skill.pick, skill.omit), is_warning=True)
    yield from _wildcard_warnings(where, skill.allowed_domains)


def _pick_and_omit(pick: tuple[str, ...], omit: tuple[str, ...]) -> str:
    kept = [name for name in pick if name not in omit]
    idle = [name for name in omit if name not in pick]
    message = (
        "both pick and omit are set: the skill keeps the tools pick names, then drops those "
        f"omit names (here: {', '.join(kept) or 'no tool at all'})"
    )
    if idle:
        message += f"; omit of {', '.join(idle)} changes nothing, pick does not keep them"
    return message


def _wildcard_warnings(where: str, patterns: tuple[str, ...]) -> Iterator[ConfigIssue]:
    for index, pattern in enumerate(patterns):
        suffix = shared_suffix(pattern)
        if suffix is None:
            continue
        yield ConfigIssue(
            f"{where}.allowedDomains[{index}]",
            f"wildcard {pattern!r} covers {suffix!r}, a suffix anyone can register a site "
            f"under (public suffix list, private section): EVERY tenant's host under {suffix} "
            "is reachable, not only the service you mean. Name the hosts you need if you can; "
            "`validate --strict` refuses it",
            is_warning=True,
        )
