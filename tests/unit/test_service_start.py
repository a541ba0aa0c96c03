"""`serve` checks all of its input before it touches the engine, and warns about plain HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from perstack_sandbox import cli, engine
from perstack_sandbox.errors import ConfigError
from perstack_sandbox.service import Address, ServeOptions, serve
from perstack_sandbox.service._pools import PoolSpec
from perstack_sandbox.service._server import PLAIN_HTTP_WARNING

if TYPE_CHECKING:
    from pathlib import Path

TOML = '[experts."demo"]\ninstruction = "test"\n'


class EngineTouched(Exception):  # noqa: N818 - a signal of the test, not an error of ours
    """Raised by the fake start-up sweep: the engine was reached."""


@pytest.fixture
def sweeps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the start-up sweep (the first engine call) by one that records and stops."""
    calls: list[str] = []

    def sweep() -> list[str]:
        calls.append("collect_garbage")
        raise EngineTouched

    monkeypatch.setattr(engine, "collect_garbage", sweep)
    return calls


def serve_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run `perstack-sandbox serve ARGS`; return the exit code and stderr."""
    monkeypatch.setattr("sys.argv", ["perstack-sandbox", "serve", *args])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return int(exited.value.code or 0), err


def test_a_missing_pool_config_exits_2_before_any_engine_call(
    tmp_path: Path, monkeypatch, capsys, sweeps: list[str]
) -> None:
    """`serve --pool demo=1 -c /nonexistent/perstack.toml` exits 2; no sweep ran, no socket.

    Fails when (checked by hand): `serve` checks the pools only when it opens them, after
    the start-up sweep (the sweep ran, then exit 2), as before.
    """
    socket_path = tmp_path / "s.sock"
    missing = tmp_path / "nonexistent" / "perstack.toml"
    code, err = serve_cli(
        monkeypatch,
        capsys,
        "--listen",
        f"unix:{socket_path}",
        "--pool",
        "demo=1",
        "-c",
        str(missing),
    )
    assert code == 2
    assert "cannot read" in err
    assert sweeps == []
    assert not socket_path.exists()


def test_a_pool_of_an_unknown_expert_exits_2_before_any_engine_call(
    tmp_path: Path, monkeypatch, capsys, sweeps: list[str]
) -> None:
    """A pool of an Expert the config lacks is bad input, found before the sweep."""
    config = tmp_path / "perstack.toml"
    config.write_text(TOML, encoding="utf-8")
    code, err = serve_cli(
        monkeypatch,
        capsys,
        "--listen",
        f"unix:{tmp_path / 's.sock'}",
        "--pool",
        "nope=1",
        "-c",
        str(config),
    )
    assert code == 2
    assert "nope" in err
    assert sweeps == []


def test_good_input_reaches_the_sweep(tmp_path: Path, sweeps: list[str]) -> None:
    """With a readable config and a known Expert, the first engine call is the sweep."""
    config = tmp_path / "perstack.toml"
    config.write_text(TOML, encoding="utf-8")
    options = ServeOptions(
        address=Address(path=tmp_path / "s.sock"), pools=(PoolSpec("demo", 1),), config_path=config
    )
    with pytest.raises(EngineTouched):
        serve(options, say=lambda _line: None)
    assert sweeps == ["collect_garbage"]


def test_a_bad_config_is_a_config_error_from_the_library_too(tmp_path: Path, sweeps) -> None:
    """`service.serve` raises the config's error (exit 2 in the CLI) with the engine untouched."""
    options = ServeOptions(
        address=Address(path=tmp_path / "s.sock"),
        pools=(PoolSpec("demo", 1),),
        config_path=tmp_path / "missing.toml",
    )
    with pytest.raises(ConfigError):
        serve(options, say=lambda _line: None)
    assert sweeps == []


def test_allow_remote_warns_that_tokens_and_secrets_travel_as_plain_http(
    sweeps: list[str],
) -> None:
    """With --allow-remote the first line said is the plain-HTTP warning; without it, none."""
    said: list[str] = []
    loopback = Address(host="127.0.0.1", port=0)
    with pytest.raises(EngineTouched):
        serve(ServeOptions(address=loopback, allow_remote=True), say=said.append)
    assert said == [PLAIN_HTTP_WARNING]
    assert "TLS" in PLAIN_HTTP_WARNING
    said.clear()
    with pytest.raises(EngineTouched):
        serve(ServeOptions(address=loopback), say=said.append)
    assert said == []
    assert sweeps == ["collect_garbage", "collect_garbage"]
