"""What a new `perstack-sandbox` process imports before its sandbox starts (decision 49).

`run` spawned as a process pays for every module it imports; what the sandbox's start does not
need is imported later (the MCP SDK, side by side with the start) or never (Kubernetes,
the service, a registry client). Each check runs a fresh interpreter and reads `sys.modules`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from perstack_sandbox import state

# Needed by no command until it runs something: the CLI's start-up and `--help` load none.
HEAVY_FOR_THE_CLI = ("docker", "requests", "pydantic")
# Needed by a run only once its sandbox is up (the MCP layer), or by other commands only.
HEAVY_FOR_A_START = (
    "mcp",
    "mcp_types",
    "uvicorn",
    "starlette",
    "sse_starlette",
    "cryptography",
    "kubernetes_asyncio",
    "yaml",
    "prometheus_client",
    "httpx",
    "httpx2",
)
TOML = """
[experts."e"]
instruction = "test"

[experts."e".skills."api"]
type = "mcpStdioSkill"
command = "python3"
args = ["server.py"]
"""


def _loaded(code: str, names: tuple[str, ...]) -> list[str]:
    """Run `code` in a fresh interpreter; return which of `names` it left in sys.modules."""
    report = f"import json, sys; print(json.dumps(sorted(set({list(names)!r}) & set(sys.modules))))"
    probe = f"{textwrap.dedent(code)}\n{report}"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return list(json.loads(done.stdout.splitlines()[-1]))


def test_the_cli_starts_without_docker_pydantic_or_the_mcp_sdk():
    """Importing the command line (what `--help` and every command pay) loads none of them."""
    assert _loaded("import perstack_sandbox.cli", HEAVY_FOR_THE_CLI + HEAVY_FOR_A_START) == []


def test_a_run_is_prepared_without_the_mcp_sdk_or_other_commands_modules(tmp_path, monkeypatch):
    """`run`'s path up to the sandbox's start (config, plan, secrets) imports no MCP layer."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path / "state"))
    (tmp_path / "expert").mkdir()
    config = tmp_path / "expert" / "perstack.toml"
    config.write_text(TOML)
    code = f"""
        from pathlib import Path
        import perstack_sandbox.cli
        from perstack_sandbox import launch, run
        launch.prepare(launch.LaunchOptions(config_path=Path({str(config)!r}), expert="e"))
    """
    assert _loaded(code, HEAVY_FOR_A_START) == []


@pytest.mark.parametrize("module", ["perstack_sandbox.gateway", "perstack_sandbox.skills"])
def test_the_preload_imports_the_mcp_layer_a_run_needs(module):
    """After `import_mcp_layer` (what a run awaits once its sandbox is up) the layer is there."""
    code = "from perstack_sandbox import run; run.preload_mcp_layer(); run.import_mcp_layer()"
    assert set(_loaded(code, (module, "mcp"))) == {module, "mcp"}
