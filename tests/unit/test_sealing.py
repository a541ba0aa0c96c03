"""Sealed secrets, the orchestrator's half: placeholders, the seal message, the CLI flags."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING
from unittest.mock import patch

import pytest
from test_cli_run import TOML, run_cli
from test_launch import CANARY, _config, _RecordingSandbox

from perstack_sandbox import engine, open_run
from perstack_sandbox.config import load_config
from perstack_sandbox.errors import UsageError
from perstack_sandbox.plan import Secret, SkillSecrets, host_secrets, seal_secrets
from perstack_sandbox.plan._sealing import MIN_PLACEHOLDER_LENGTH, placeholder_for
from perstack_sandbox.run import build_sessions
from perstack_sandbox.run._prepare import passthrough_host
from perstack_sandbox_proxy._seal import MIN_MASKED_BYTES

if TYPE_CHECKING:
    from pathlib import Path

BUNDLE = "/tmp/perstack-ca/bundle.pem"  # noqa: S108 - a path inside the sandbox
VALUES = {
    "search": SkillSecrets(
        "search", {"API_KEY": Secret("sk-live-0123456789"), "EMPTY": Secret("")}
    ),
    "mail": SkillSecrets("mail", {"API_KEY": Secret("sk-live-0123456789")}),
}


def test_every_value_gets_its_own_placeholder_of_the_same_length() -> None:
    """The same value in two skills gets two placeholders, each as long as the value."""
    sealed = seal_secrets(VALUES)
    one = sealed.placeholders["search"].values["API_KEY"].reveal()
    two = sealed.placeholders["mail"].values["API_KEY"].reveal()
    assert one != two
    assert len(one) == len(two) == len("sk-live-0123456789")
    assert "sk-live-0123456789" not in (one, two)
    assert sealed.placeholders["search"].values["EMPTY"].reveal() == ""


def test_a_non_ascii_value_gets_a_placeholder_as_long_as_its_utf8() -> None:
    """Lengths match in bytes, so masking a response body never changes its length."""
    values = {"s": SkillSecrets("s", {"K": Secret("clé-secrète-ünï")})}
    placeholder = seal_secrets(values).placeholders["s"].values["K"].reveal()
    assert placeholder.isascii()
    assert len(placeholder) == len("clé-secrète-ünï".encode())


def test_a_short_value_gets_a_placeholder_of_the_minimum_length_that_the_proxy_accepts() -> None:
    """DEBUG=1 gets 16 random characters, the length below which the proxy refuses one."""
    values = {"s": SkillSecrets("s", {"DEBUG": Secret("1"), "REGION": Secret("eu")})}
    placeholders = seal_secrets(values).placeholders["s"].values
    assert [len(placeholders[name].reveal()) for name in ("DEBUG", "REGION")] == [16, 16]
    assert MIN_PLACEHOLDER_LENGTH == MIN_MASKED_BYTES


def test_no_placeholder_is_found_inside_another() -> None:
    """A candidate inside or around a placeholder already taken is drawn again."""
    taken = {"A" * 40}
    with patch("secrets.choice", side_effect=["A"] * 16 + ["B"] * 16):
        assert placeholder_for("1", taken) == "B" * 16


def test_placeholders_are_fresh_for_every_run() -> None:
    """Two seals of the same values share no placeholder."""
    first, second = seal_secrets(VALUES), seal_secrets(VALUES)
    assert (
        first.placeholders["mail"].values["API_KEY"]
        != second.placeholders["mail"].values["API_KEY"]
    )


def test_the_seal_message_pairs_placeholders_with_values_and_never_prints_them() -> None:
    """The message is the proxy's JSON; its repr and the sealed object's repr hide values."""
    sealed = seal_secrets(VALUES, ["pinned.example.com"])
    message = sealed.message()
    document = json.loads(message)
    entry = document["skills"]["search"]["API_KEY"]
    assert entry == {
        "placeholder": sealed.placeholders["search"].values["API_KEY"].reveal(),
        "value": "sk-live-0123456789",
    }
    assert document["op"] == "seal"
    assert document["passthrough"] == ["pinned.example.com"]
    assert "sk-live" not in repr(message)
    assert "sk-live" not in repr(sealed)


def test_sealed_skills_trust_the_run_bundle_in_every_client_variable() -> None:
    """With the sealed bundle, the CA variables (curl's too) name it; without, the system's."""
    plain = engine.Sandbox("run", "c", "10.0.0.2", 3128, "p", "10.0.0.3", "n")
    sealed = engine.Sandbox("run", "c", "10.0.0.2", 3128, "p", "10.0.0.3", "n", ca_bundle=BUNDLE)
    names = ("SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
    assert {sealed.proxy_env()[name] for name in names} == {BUNDLE}
    assert "CURL_CA_BUNDLE" not in plain.proxy_env()
    assert plain.proxy_env()["SSL_CERT_FILE"] == "/etc/ssl/certs/ca-certificates.crt"


def test_the_test_network_adds_policy_keys_only_when_used() -> None:
    """An unused TestNetwork adds nothing; a used one adds testHosts and testUpstreamCa."""
    assert engine.TestNetwork().policy_keys() == {}
    used = engine.TestNetwork(hosts={"a.example.com": "127.0.0.1"}, upstream_ca="PEM")
    assert used.policy_keys() == {
        "testHosts": {"a.example.com": "127.0.0.1"},
        "testUpstreamCa": "PEM",
    }


def test_a_passthrough_host_is_canonicalised_or_refused() -> None:
    """Upper case is folded; a value that is not a host is a usage error."""
    assert passthrough_host("Pinned.Example.COM") == "pinned.example.com"
    with pytest.raises(UsageError, match="seal passthrough host"):
        passthrough_host("https://x.example.com/")


def test_seal_passthrough_without_seal_secrets_is_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--seal-passthrough alone exits 2 before anything starts."""
    config = tmp_path / "perstack.toml"
    config.write_text(TOML, encoding="utf-8")
    code, _, err = run_cli(
        monkeypatch, capsys, "tools", "e", "--seal-passthrough", "a.example.com", "-c", str(config)
    )
    assert code == 2
    assert "--seal-passthrough needs --seal-secrets" in err


@pytest.mark.parametrize(
    ("command", "report"), [(["tools", "e"], "tools_report"), (["call", "e", "x"], "call_report")]
)
def test_seal_flags_reach_the_launch_and_the_run(tmp_path, monkeypatch, command, report) -> None:
    """--seal-secrets and --seal-passthrough travel from the CLI to open_run's keywords."""
    from perstack_sandbox import cli, launch  # noqa: PLC0415 - patched below

    seen: list[dict[str, object]] = []

    def capture(options, *_args, **_kwargs):
        monkeypatch.setattr(launch, "open_run", lambda *_a, **kwargs: seen.append(kwargs))
        launch.cli_run(options)
        return "captured"

    (tmp_path / "perstack.toml").write_text(TOML, encoding="utf-8")
    monkeypatch.setattr(launch, report, capture)
    flags = ["--seal-secrets", "--seal-passthrough", "a.example.com"]
    argv = ["perstack-sandbox", *command, *flags, "-c", str(tmp_path / "perstack.toml")]
    monkeypatch.setattr(sys, "argv", argv)
    cli.main()
    assert [(kw["seal_secrets"], kw["seal_passthrough"]) for kw in seen] == [
        (True, ("a.example.com",))
    ]


def test_a_sealed_run_hands_its_skills_placeholders_only(tmp_path, monkeypatch) -> None:
    """Preparing a sealed run gives build_sessions placeholders; the values stay in `sealed`."""
    monkeypatch.chdir("/")
    config = _config(tmp_path, f"API_TOKEN={CANARY}\nDB_PASSWORD=pw-0123456789\nREGION=r\n")
    run = open_run(config, "e", secrets=host_secrets(load_config(config)[0]), seal_secrets=True)
    prepared = run._prepare()
    assert prepared.sealed is not None
    sandbox = _RecordingSandbox("run", "c", "10.0.0.2", 3128, "p", "10.0.0.3", "n", {})
    envs = {s.name: s._factory() for s in build_sessions(prepared, sandbox)}
    assert CANARY not in json.dumps(envs)
    assert len(envs["api"]["API_TOKEN"]) == len(CANARY)
    assert json.loads(prepared.sealed.message())["skills"]["api"]["API_TOKEN"]["value"] == CANARY
