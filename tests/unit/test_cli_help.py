"""Every command's `--help`: plain rendering, argument names, real examples; README tables.

The help is parsed, not compared with a copy: each command is found by walking the
application, so a command added later is checked the same way.
"""

from __future__ import annotations

import re
import shlex
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
import typer.main

from perstack_sandbox.cli import EXIT_CODE_TABLE, PROGRAM, app, main
from perstack_sandbox.cli._help import PlainCommand, PlainGroup

README = Path(__file__).parents[2] / "README.md"
ARGUMENT_NAMES = {"EXPERT", "TOOL", "RUN"}


def commands(group: Any = None, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Return (command path, click command) of every leaf command, sub-groups walked."""
    group = group if group is not None else typer.main.get_command(app)
    found = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found += commands(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


COMMANDS = commands()


class Isolation(StrEnum):
    """A choice option's values (like another branch's `--isolation`)."""

    RUNC = "runc"
    GVISOR = "gvisor"


IDS = [" ".join(path) for path, _ in COMMANDS]


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the console script with `args`; return (exit code, stdout, stderr)."""
    monkeypatch.setattr("sys.argv", [PROGRAM, *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def help_of(monkeypatch, capsys, *path: str) -> str:
    """Return the `--help` text of a command path (exit 0, nothing on stderr)."""
    code, out, err = run_cli(monkeypatch, capsys, *path, "--help")
    assert (code, err) == (0, ""), err
    return out


def section(text: str, heading: str) -> list[str]:
    """Return the indented lines under `Heading:` up to the next blank line."""
    lines = text.splitlines()
    start = lines.index(f"{heading}:") + 1
    block = []
    for line in lines[start:]:
        if not line.strip():
            break
        block.append(line)
    return block


def usage_arguments(text: str) -> list[str]:
    """Return the words after `[OPTIONS]` on the usage line."""
    usage = text.splitlines()[0]
    return usage.split("[OPTIONS]", 1)[1].split()


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_help_renders_flags_plainly_and_names_arguments_in_capitals(
    path, command, monkeypatch, capsys
) -> None:
    """No `<type>` markers, no `{name}`: flags are bare, values and arguments are CAPITALS."""
    del command
    text = help_of(monkeypatch, capsys, *path)
    assert text.startswith(f"Usage: {PROGRAM} {' '.join(path)} [OPTIONS]")
    assert not re.search(r"<[a-z][a-z\[\]|, ]*>", text), text
    assert "{" not in text.splitlines()[0]
    assert "--help  " in text or "--help\n" in text
    for word in usage_arguments(text):
        assert word.strip("[]") in ARGUMENT_NAMES, word
    for line in section(text, "Options"):
        flag = re.match(r"\s+(?:-\w, )?(--[a-z-]+)( \S+)?\s", line + " ")
        if flag and flag.group(2):
            value = flag.group(2).strip()
            assert value == value.upper() or "|" in value, line


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_help_shows_one_or_two_examples_that_parse(path, command, monkeypatch, capsys) -> None:
    """Each command shows 1-2 example lines of itself, and each parses with its options."""
    del command
    examples = section(help_of(monkeypatch, capsys, *path), "Examples")
    assert 1 <= len(examples) <= 2
    for example in examples:
        words = shlex.split(example)
        words = words[: words.index(">")] if ">" in words else words
        assert words[: len(path) + 1] == [PROGRAM, *path], example
        parse(words[1:])


def parse(words: list[str]) -> None:
    """Parse a command line like the CLI would, without running it (usage errors raise)."""
    command: Any = typer.main.get_command(app)
    while hasattr(command, "commands"):
        name, words = words[0], words[1:]
        command = command.commands[name]
    command.make_context(name, list(words))


def test_version_prints_the_package_version(monkeypatch, capsys) -> None:
    """`--version` prints the program and its version, and exits 0."""
    code, out, _ = run_cli(monkeypatch, capsys, "--version")
    assert code == 0
    assert re.fullmatch(rf"{PROGRAM} \d+\.\d+\.\d+\S*\n", out), out


def test_the_top_level_help_lists_commands_and_the_exit_code_table(monkeypatch, capsys) -> None:
    """`--help` lists every command (sub-commands spelled out) and every exit code."""
    text = help_of(monkeypatch, capsys)
    listed = [line.strip().split("  ")[0] for line in section(text, "Commands") if line[2] != " "]
    assert listed == IDS
    codes = [int(line.split()[0]) for line in section(text, "Exit codes") if line[2] != " "]
    assert codes == [code for code, _ in EXIT_CODE_TABLE]


def readme_table(heading: str) -> list[list[str]]:
    """Return the cells of the first Markdown table after `heading` in the README."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index(heading)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # without the header row


def test_the_readme_command_table_matches_the_help(monkeypatch, capsys) -> None:
    """Each README row is `command ARGS` and summary exactly as the commands' help has them."""
    expected = []
    for path, command in COMMANDS:
        arguments = usage_arguments(help_of(monkeypatch, capsys, *path))
        usage = " ".join([*path, *arguments])
        expected.append([f"`{usage}`", command.get_short_help_str(limit=500)])
    assert readme_table("### Commands") == expected


def test_the_readme_exit_code_table_matches_the_cli() -> None:
    """The README's exit codes are the CLI's table, word for word."""
    assert readme_table("### Exit codes") == [
        [str(code), meaning] for code, meaning in EXIT_CODE_TABLE
    ]


def test_an_option_added_later_renders_like_the_others() -> None:
    """A choice option, a repeatable path and a flag render from the parameter alone.

    (Another branch adds `--isolation runc|gvisor` to tools/call/run: it needs no change here.)
    """
    demo = typer.Typer(cls=PlainGroup, rich_markup_mode=None)

    @demo.command(cls=PlainCommand, epilog="demo go X --isolation gvisor")
    def go(
        target: Annotated[str, typer.Argument(metavar="X", help="A thing.")],
        isolation: Annotated[Isolation, typer.Option(help="The runtime.")] = Isolation.RUNC,
        extra: Annotated[list[Path] | None, typer.Option(help="More files.")] = None,
        fast: Annotated[bool, typer.Option("--fast", help="Go fast.")] = False,  # noqa: FBT002
    ) -> None:
        """Go somewhere."""
        del target, isolation, extra, fast

    @demo.command(cls=PlainCommand)
    def other() -> None:
        """Do nothing."""

    command = typer.main.get_command(demo).commands["go"]
    text = command.get_help(command.make_context("go", ["x"]))
    assert "Usage: go [OPTIONS] X" in text
    assert re.search(r"--isolation runc\|gvisor\s+The runtime\. \[default: runc\]", text), text
    assert re.search(r"--extra PATH\s+More files\. \[repeatable\]", text), text
    assert re.search(r"--fast\s+Go fast\.", text), text
    assert "Examples:\n  demo go X --isolation gvisor" in text
