"""Names and URIs across skills: what the host client sees, and which skill serves a request.

By default tool and prompt names, resource URIs and URI templates pass through unchanged, and
the same name (or URI, or template) offered by two skills is a startup error naming both and
how to fix it. With `prefix=True` (`--prefix-tools`) every skill gets its own namespace:

- tools and prompts are exposed as `skill__name`;
- resource URIs and templates as `perstack-skill://<skill>/<original URI>`, the skill name
  percent-encoded; URIs inside results (resource links, embedded resources, read contents,
  update notifications) are rewritten the same way, so whatever a client is handed it can read.

A `resources/read` of a URI nobody listed goes to the skill whose template matches it, else to
the only skill that offers resources at all; with two or more such skills it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Generic, TypeVar
from urllib.parse import quote, unquote

import mcp_types as types
from mcp.shared.uri_template import InvalidUriTemplate, UriTemplate

from perstack_sandbox.errors import GatewayError, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from perstack_sandbox.plan import InteractiveTool
    from perstack_sandbox.skills import SkillSpec


PREFIX_SEPARATOR: Final = "__"
URI_SCHEME: Final = "perstack-skill"
_URI_HEAD: Final = f"{URI_SCHEME}://"

ItemT = TypeVar("ItemT", types.Prompt, types.Resource, types.ResourceTemplate)
ResultT = TypeVar("ResultT", types.CallToolResult, types.GetPromptResult, types.ReadResourceResult)


@dataclass(frozen=True, slots=True)
class Route:
    """Where an exposed tool name leads."""

    exposed: str
    skill: str
    original: str
    tool: types.Tool
    interactive: InteractiveTool | None = None


@dataclass(frozen=True, slots=True)
class Named(Generic[ItemT]):
    """Where an exposed prompt name, resource URI or URI template leads."""

    exposed: str
    skill: str
    original: str
    item: ItemT


def exposed_name(skill: str, tool: str, *, prefix: bool) -> str:
    """Return the name a host client sees for tool (or prompt) `tool` of `skill`."""
    return f"{skill}{PREFIX_SEPARATOR}{tool}" if prefix else tool


def exposed_uri(skill: str, uri: str, *, prefix: bool) -> str:
    """Return the URI (or URI template) a host client sees for `uri` of `skill`."""
    return f"{_URI_HEAD}{quote(skill, safe='')}/{uri}" if prefix else uri


def split_uri(uri: str) -> tuple[str, str] | None:
    """Return (skill, original URI) of a prefixed URI, or None if `uri` is not one."""
    if not uri.startswith(_URI_HEAD):
        return None
    skill, sep, original = uri.removeprefix(_URI_HEAD).partition("/")
    return (unquote(skill), original) if sep and skill else None


def build_routes(
    tools_by_skill: Mapping[str, Sequence[types.Tool]],
    interactive: Sequence[InteractiveTool] = (),
    *,
    prefix: bool = False,
) -> dict[str, Route]:
    """Map exposed tool names to skills; a collision names both skills and how to fix it.

    Raises:
        GatewayError: two skills expose the same name.

    """
    routes: dict[str, Route] = {}
    candidates = [
        (skill, tool, None) for skill, tools in tools_by_skill.items() for tool in tools
    ] + [(item.skill, _interactive_tool(item), item) for item in interactive]
    for skill, tool, item in candidates:
        name = exposed_name(skill, tool.name, prefix=prefix)
        if name in routes:
            raise GatewayError(_collision("tool name", routes[name].skill, skill, tool.name))
        exposed = tool.model_copy(update={"name": name})
        routes[name] = Route(name, skill, tool.name, exposed, item)
    return routes


def build_named(
    what: str,
    items_by_skill: Mapping[str, Sequence[ItemT]],
    key: Callable[[ItemT], str],
    expose: Callable[[str, str], str],
) -> dict[str, Named[ItemT]]:
    """Map exposed prompt names, URIs or templates to skills (collisions as for tools).

    `key(item)` is the item's name or URI; `expose(skill, key)` what the host client sees.

    Raises:
        GatewayError: two skills expose the same name or URI.

    """
    named: dict[str, Named[ItemT]] = {}
    for skill, items in items_by_skill.items():
        for item in items:
            original = key(item)
            exposed = expose(skill, original)
            if exposed in named:
                raise GatewayError(_collision(what, named[exposed].skill, skill, original))
            named[exposed] = Named(exposed, skill, original, _renamed(item, exposed))
    return named


def _renamed(item: ItemT, exposed: str) -> ItemT:
    if isinstance(item, types.Prompt):
        return item.model_copy(update={"name": exposed})
    if isinstance(item, types.Resource):
        return item.model_copy(update={"uri": exposed})
    return item.model_copy(update={"uri_template": exposed})


def _collision(what: str, first: str, second: str, name: str) -> str:
    return (
        f"{what} {name!r} is offered by both skill {first!r} and skill {second!r}. "
        f"Use pick/omit in perstack.toml to keep one of them, or run with --prefix-tools "
        f"(gives each skill its own names: {exposed_name(first, name, prefix=True)!r} and "
        f"{exposed_name(second, name, prefix=True)!r} for tools and prompts)"
    )


def _interactive_tool(item: InteractiveTool) -> types.Tool:
    schema = item.input_schema or {"type": "object"}
    return types.Tool(name=item.name, description=item.description or None, input_schema=schema)


@dataclass
class Catalog:
    """Everything the host client sees, and where each name leads."""

    prefix: bool = False
    specs: Mapping[str, SkillSpec] = field(default_factory=dict)
    tools: dict[str, Route] = field(default_factory=dict)
    prompts: dict[str, Named[types.Prompt]] = field(default_factory=dict)
    resources: dict[str, Named[types.Resource]] = field(default_factory=dict)
    templates: dict[str, Named[types.ResourceTemplate]] = field(default_factory=dict)
    hidden: set[tuple[str, str]] = field(default_factory=set)  # (skill, URI) pick/omit hide

    def prompt(self, name: str) -> Named[types.Prompt]:
        """Find an exposed prompt.

        Raises:
            UsageError: no skill offers it.

        """
        found = self.prompts.get(name)
        if found is None:
            known = ", ".join(sorted(self.prompts)) or "none"
            raise UsageError(f"no prompt named {name!r}; available: {known}")
        return found

    def resource(self, uri: str) -> tuple[str, str]:
        """Return (skill, original URI) that serves an exposed resource URI.

        Raises:
            UsageError: no skill serves it, or its skill's pick/omit hides it.

        """
        listed = self.resources.get(uri)
        if listed is not None:
            return listed.skill, listed.original
        template = self.template_for(uri)
        owner = template.skill if template is not None else self._sole_resource_skill(uri)
        original = self._original(owner, uri)
        spec = self.specs.get(owner)
        hidden = (owner, original) in self.hidden or (spec is not None and not spec.keeps(original))
        if hidden or (template is None and spec is not None and spec.pick):
            raise UsageError(f"resource {uri!r} is not among skill {owner!r}'s picked resources")
        return owner, original

    def template_for(self, uri: str) -> Named[types.ResourceTemplate] | None:
        """Return the visible template that matches `uri` (exposed form), if any."""
        for template in self.templates.values():
            if _matches(template.exposed, uri):
                return template
        return None

    def _original(self, skill: str, uri: str) -> str:
        if not self.prefix:
            return uri
        split = split_uri(uri)
        if split is None or split[0] != skill:
            raise UsageError(f"resource {uri!r} names no skill ({_URI_HEAD}<skill>/<uri>)")
        return split[1]

    def _sole_resource_skill(self, uri: str) -> str:
        if self.prefix:
            split = split_uri(uri)
            if split is None or split[0] not in self.specs:
                raise UsageError(f"no skill serves resource {uri!r}")
            return split[0]
        owners = sorted({named.skill for named in [*self.resources.values()]})
        owners += sorted({t.skill for t in self.templates.values()} - set(owners))
        if len(owners) != 1:
            raise UsageError(f"no skill lists resource {uri!r} and none of its templates match")
        return owners[0]

    def expose_results(self, skill: str, result: ResultT) -> ResultT:
        """Rewrite the URIs inside a skill's result into the form the host client sees."""
        if not self.prefix:
            return result
        return rewrite_uris(result, lambda uri: exposed_uri(skill, uri, prefix=True))


def _matches(template: str, uri: str) -> bool:
    try:
        return UriTemplate.parse(template).match(uri) is not None
    except InvalidUriTemplate:
        return template == uri


def rewrite_uris(result: ResultT, rename: Callable[[str], str]) -> ResultT:
    """Return `result` with every resource URI in it renamed (links, embedded, contents)."""
    if isinstance(result, types.ReadResourceResult):
        contents = [item.model_copy(update={"uri": rename(item.uri)}) for item in result.contents]
        return result.model_copy(update={"contents": contents})
    if isinstance(result, types.GetPromptResult):
        messages = [
            message.model_copy(update={"content": _rewrite_block(message.content, rename)})
            for message in result.messages
        ]
        return result.model_copy(update={"messages": messages})
    blocks = [_rewrite_block(block, rename) for block in result.content]
    return result.model_copy(update={"content": blocks})


def _rewrite_block(block: types.ContentBlock, rename: Callable[[str], str]) -> types.ContentBlock:
    if isinstance(block, types.ResourceLink):
        return block.model_copy(update={"uri": rename(block.uri)})
    if isinstance(block, types.EmbeddedResource):
        inner = block.resource.model_copy(update={"uri": rename(block.resource.uri)})
        return block.model_copy(update={"resource": inner})
    return block
