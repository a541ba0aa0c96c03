"""`down` on the command line: what it takes down, and when it asks (engine calls faked)."""

from __future__ import annotations

import io

import pytest

from perstack_sandbox import cli, engine
from perstack_sandbox.engine import RunInfo, _lifecycle, _sweep


def info(run_id: str, user: str) -> RunInfo:
    """Return a live run of `user` as `ps` would list it."""
    return RunInfo(
        run_id, "e", "1", "h", is_owner_alive=True, created="", objects=(), owner_user=user
    )


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fake the engine: two runs of user `me`; record which run ids are taken down."""
    removed: list[str] = []
    monkeypatch.setattr(engine, "owner_user", lambda: "me")

    def runs_to_take_down(*, everyone: bool) -> list[RunInfo]:
        assert not everyone
        return [info("r1", "me"), info("r2", "me")]

    monkeypatch.setattr(engine, "runs_to_take_down", runs_to_take_down)

    def take_down(run_id: str) -> list[str]:
        removed.append(run_id)
        return [f"container perstack-{run_id}-sandbox"]

    monkeypatch.setattr(engine, "take_down", take_down)
    return removed


def run_cli(monkeypatch, capsys, *args: str, stdin: str = "", tty: bool = False) -> tuple[int, str]:
    """Run `perstack-sandbox ARGS` with `stdin` (a terminal when `tty`); return code, stderr."""
    fake = io.StringIO(stdin)
    fake.isatty = lambda: tty  # type: ignore[method-assign]
    monkeypatch.setattr("sys.stdin", fake)
    monkeypatch.setattr("sys.argv", ["perstack-sandbox", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_down_all_on_a_terminal_lists_the_runs_and_asks(taken, monkeypatch, capsys) -> None:
    """On a terminal, `down --all` lists this user's runs and takes them down on 'y'."""
    code, err = run_cli(monkeypatch, capsys, "down", "--all", stdin="y\n", tty=True)
    assert code == 0
    assert "r1  e  me pid 1@h" in err
    assert "Take down these 2 run(s) of user me?" in err
    assert taken == ["r1", "r2"]


def test_answering_no_takes_nothing_down(taken, monkeypatch, capsys) -> None:
    """Declining is not an error: nothing is taken down, exit 0."""
    code, err = run_cli(monkeypatch, capsys, "down", "--all", stdin="n\n", tty=True)
    assert (code, taken) == (0, [])
    assert "nothing taken down" in err


def test_without_a_terminal_down_all_needs_yes(taken, monkeypatch, capsys) -> None:
    """A script must say --yes: without a terminal to ask on, `down --all` refuses (exit 2)."""
    code, err = run_cli(monkeypatch, capsys, "down", "--all")
    assert (code, taken) == (2, [])
    assert "add --yes" in err
    code, _ = run_cli(monkeypatch, capsys, "down", "--all", "--yes")
    assert (code, taken) == (0, ["r1", "r2"])


@pytest.mark.parametrize(
    "args",
    [["down"], ["down", "r1", "--all"], ["down", "r1", "--everyone"], ["down", "--everyone"]],
)
def test_down_wants_one_run_or_all(taken, monkeypatch, capsys, args) -> None:
    """A RUN or --all, not both nor neither; --everyone only with --all: exit 2."""
    code, _ = run_cli(monkeypatch, capsys, *args)
    assert (code, taken) == (2, [])


def test_runs_to_take_down_are_this_users_unless_everyone(monkeypatch) -> None:
    """Only runs labelled with this user are picked; --everyone picks all, unlabelled too."""
    runs = [info("a", "me"), info("b", "other"), info("c", "")]
    monkeypatch.setattr(_sweep, "list_runs", lambda: runs)
    monkeypatch.setattr(_lifecycle, "owner_user", lambda: "me")
    assert [r.run_id for r in engine.runs_to_take_down()] == ["a"]
    assert [r.run_id for r in engine.runs_to_take_down(everyone=True)] == ["a", "b", "c"]
