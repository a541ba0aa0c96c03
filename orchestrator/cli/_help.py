"""Plain `--help` for every command, the same way for every parameter.

Typer renders boxes and each value's Python type (`<bool>`, `<list[Path]>`), and arguments as
`{expert}`. These command classes render instead, from each parameter alone:

- arguments by their metavar (`EXPERT`, `TOOL`, `RUN`), optional ones in brackets;
- a flag by its names only (`--json`), a value option by its names and its metavar (`--config
  PATH`): the option's own `metavar`, else its choices (`runc|gvisor`), else a type word;
- the command's examples (its epilog, one per line) verbatim under "Examples:", and for the
  application its commands (sub-commands spelled out) and the exit-code table.

Nothing here knows a particular option, so an option added later renders like the others.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Final, get_args, get_origin

from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from typer import _click

TYPE_WORDS: Final = {int: "INTEGER", float: "NUMBER"}
EXAMPLES_HEADING: Final = "Examples"


def argument_metavar(param: Any) -> str:  # noqa: ANN401 - typer's parameter classes are private
    """Return an argument's name as usage shows it: `EXPERT`, or `[RUN]` when optional."""
    name = str(param.metavar or param.name).upper()
    if getattr(param, "nargs", 1) != 1:
        name += "..."
    return name if param.required else f"[{name}]"


def value_metavar(param: Any) -> str:  # noqa: ANN401 - typer's parameter classes are private
    """Return the word shown after a value option: its metavar, choices, or a type word."""
    if param.metavar:
        return str(param.metavar)
    descriptor = getattr(param, "type_descriptor", None)
    choices = getattr(descriptor, "choices", None)
    if choices:
        return "|".join(str(getattr(choice, "value", choice)) for choice in choices)
    annotation = getattr(descriptor, "annotation", str)
    if get_origin(annotation) in {list, tuple}:  # a repeatable option: its items' type
        annotation = (get_args(annotation) or (str,))[0]
    is_path = isinstance(annotation, type) and issubclass(annotation, PurePath)
    if is_path or getattr(descriptor, "is_path", False):
        return "PATH"
    return TYPE_WORDS.get(annotation, "TEXT")


def option_names(param: Any) -> str:  # noqa: ANN401 - typer's parameter classes are private
    """Return `-c, --config PATH` or `--json`: short names first, the metavar unless a flag."""
    names = sorted(param.opts, key=lambda name: (name.startswith("--"), name))
    text = ", ".join(names)
    if param.secondary_opts:
        text += " / " + ", ".join(param.secondary_opts)
    if not getattr(param, "is_flag", False) and not getattr(param, "count", False):
        text += f" {value_metavar(param)}"
    return text


def option_help(param: Any, ctx: _click.Context) -> str:  # noqa: ANN401 - private classes
    """Return an option's help with `[default: ...]` and `[repeatable]` where they apply."""
    extras = []
    if getattr(param, "multiple", False):
        extras.append("repeatable")
    default = param.get_default(ctx, call=False)
    if param.show_default and default not in (None, False, (), []) and not callable(default):
        extras.append(f"default: {getattr(default, 'value', default)}")  # an Enum by its value
    if param.required:
        extras.append("required")
    return " ".join([param.help or "", *(f"[{extra}]" for extra in extras)]).strip()


def parameter_rows(
    params: Sequence[Any], ctx: _click.Context
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Return the (name, help) rows of a command's arguments and of its options."""
    arguments = [
        (argument_metavar(p).strip("[]"), p.help or "")
        for p in params
        if p.param_type_name == "argument" and not getattr(p, "hidden", False)
    ]
    options = [
        (option_names(p), option_help(p, ctx))
        for p in params
        if p.param_type_name == "option" and not getattr(p, "hidden", False)
    ]
    return arguments, options


def write_verbatim(formatter: _click.HelpFormatter, heading: str, lines: Sequence[str]) -> None:
    """Write a section whose lines keep their own breaks (commands must not be rewrapped)."""
    formatter.write_paragraph()
    formatter.write_heading(heading)
    for line in lines:
        formatter.write(f"{'':>{formatter.current_indent + 2}}{line}\n")


class PlainCommand(TyperCommand):
    """A command whose help is plain text (see the module docstring)."""

    def collect_usage_pieces(self, ctx: _click.Context) -> list[str]:
        """Return `[OPTIONS] EXPERT TOOL`: arguments by their metavar."""
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [
            argument_metavar(p) for p in self.get_params(ctx) if p.param_type_name == "argument"
        ]

    def format_help(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        """Write usage, description, arguments, options and examples; never rich boxes."""
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        self.format_options(ctx, formatter)
        self.format_epilog(ctx, formatter)

    def format_options(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        """Write the Arguments and Options sections."""
        arguments, options = parameter_rows(self.get_params(ctx), ctx)
        for heading, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(heading):
                    formatter.write_dl(rows)

    def format_epilog(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        """Write the examples, one command line each, not rewrapped."""
        del ctx
        if self.epilog:
            write_verbatim(formatter, EXAMPLES_HEADING, self.epilog.strip().splitlines())


class PlainGroup(TyperGroup):
    """A command group whose help is plain text: options, then every command spelled out.

    `exit_codes` (set on the application's group) adds the exit-code table to its help.
    """

    exit_codes: tuple[tuple[int, str], ...] = ()

    def format_help(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        """Write usage, description, options, commands and exit codes."""
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        _, options = parameter_rows(self.get_params(ctx), ctx)
        with formatter.section("Options"):
            formatter.write_dl(options)
        with formatter.section("Commands"):
            formatter.write_dl(list(self.command_rows(ctx)))
        if self.exit_codes:
            with formatter.section("Exit codes"):
                formatter.write_dl([(str(code), meaning) for code, meaning in self.exit_codes])

    def command_rows(self, ctx: _click.Context, prefix: str = "") -> Iterator[tuple[str, str]]:
        """Yield (name, one-line summary) of every command, sub-groups' commands spelled out."""
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            if isinstance(command, PlainGroup):
                yield from command.command_rows(ctx, prefix=f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}", command.get_short_help_str(limit=200)
