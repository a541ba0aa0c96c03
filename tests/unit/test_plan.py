"""plan(): the pure, reviewable SandboxPlan of one expert, and its stable renderings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from perstack_sandbox.config import load_config, parse_config
from perstack_sandbox.errors import UnknownExpertError
from perstack_sandbox.plan import (
    ENTRY_DIR,
    EXPERT_DIR,
    WORKSPACE_DIR,
    PackageSpec,
    SandboxPlan,
    container_argv,
    fold_egress,
    plan,
    plan_to_json,
    plan_to_text,
    skill_slug,
)

FIXTURES = Path(__file__).parent.parent / "fixtures"
RICH = FIXTURES / "plan_rich.toml"


@pytest.fixture(scope="module")
def rich() -> SandboxPlan:
    """Plan the rich fixture's only expert."""
    config, _ = load_config(RICH)
    return plan(config, "reviewer")


def launch_of(sandbox: SandboxPlan, name: str):
    """Return the launch of skill `name`."""
    return next(s for s in sandbox.skills if s.name == name)


def test_npx_launch_composes_args_drops_yes_and_parses_the_spec(rich: SandboxPlan) -> None:
    """Without packageName the first non-flag arg is the spec; -y is npx's own and dropped."""
    base = launch_of(rich, "@perstack/base")
    assert base.package == PackageSpec(
        manager="npm", name="@perstack/base", version_spec="^0.3", slug=skill_slug("@perstack/base")
    )
    assert base.argv == (f"{ENTRY_DIR}/{base.package.slug}", "--verbose")
    assert base.workdir == WORKSPACE_DIR


def test_package_name_and_args_are_composed(rich: SandboxPlan) -> None:
    """With packageName, args (minus --yes) follow the package name; the version is recorded."""
    search = launch_of(rich, "search")
    assert search.package is not None
    assert (search.package.name, search.package.version_spec) == ("exa-mcp-server", "1.2.3")
    assert search.argv == (f"{ENTRY_DIR}/{search.package.slug}", "--log-level=info")
    assert "--yes" not in search.argv


def test_uvx_launch_is_offline_with_a_pep440_spec(rich: SandboxPlan) -> None:
    """A uvx skill runs its preinstalled tool offline; the specifier goes to the image build."""
    fetch = launch_of(rich, "fetch")
    assert fetch.package is not None
    assert fetch.argv == (f"{ENTRY_DIR}/{fetch.package.slug}", "--ignore-robots-txt")
    assert (fetch.package.manager, fetch.package.version_spec) == ("pypi", "==2025.1.1")


def test_local_command_runs_as_written_in_the_expert_folder(rich: SandboxPlan) -> None:
    """A local command keeps its argv and works in /expert; it preinstalls nothing."""
    local = launch_of(rich, "local")
    assert local.argv == ("python3", "-m", "local_server", "--root", ".")
    assert (local.kind, local.workdir, local.package) == ("local", EXPERT_DIR, None)


def test_env_names_are_sorted_deduplicated_names(rich: SandboxPlan) -> None:
    """Each skill gets the NAMES of its requiredEnv, sorted and unique, never values."""
    assert launch_of(rich, "search").env_names == ("EXA_API_KEY", "ZETA_TOKEN")
    assert launch_of(rich, "local").env_names == ("LOCAL_TOKEN",)


def test_tool_filters_and_lazy_init_are_carried(rich: SandboxPlan) -> None:
    """pick, omit and lazyInit reach the plan unchanged."""
    search = launch_of(rich, "search")
    assert (search.pick, search.lazy_init) == (("web_search_exa",), True)
    assert launch_of(rich, "fetch").omit == ("fetch_raw",)


def test_egress_is_canonical_folded_sorted_with_every_source(rich: SandboxPlan) -> None:
    """Exact entries under a wildcard fold into it, keeping every skill that asked."""
    assert [(r.pattern, r.sources) for r in rich.egress] == [
        ("*.example.com", ("@perstack/base", "remote", "search")),
        ("api.exa.ai", ("search",)),
        ("fetch-target.example.org", ("fetch",)),
    ]
    assert rich.allowed_domains == ("*.example.com", "api.exa.ai", "fetch-target.example.org")


def test_sse_endpoints_interactive_tools_limits_and_mounts(rich: SandboxPlan) -> None:
    """The plan holds SSE skills, interactive tools, the timeout and the read-only mount."""
    [remote] = rich.sse_skills
    assert (remote.host, remote.omit) == ("mcp.example.com", ("admin",))
    [tool] = rich.interactive_tools
    assert (tool.skill, tool.name, tool.input_schema["type"]) == ("ask", "askUser", "object")
    assert rich.timeout_ms == 90_000
    [mount] = rich.mounts
    assert (mount.source, mount.target, mount.read_only) == (
        str(FIXTURES.resolve()),
        "/expert",
        True,
    )


def test_an_expert_without_egress_gets_an_empty_allowlist() -> None:
    """No allowedDomains and no SSE skill means deny everything."""
    config, _ = load_config(FIXTURES / "seed_002_complete.toml")
    assert plan(config, "web-researcher").egress == ()


def test_an_unknown_expert_is_an_input_error() -> None:
    """Planning an expert that is not in the file names the ones that are."""
    config, _ = load_config(FIXTURES / "seed_002_complete.toml")
    with pytest.raises(UnknownExpertError, match="data-analyst"):
        plan(config, "nope")


@pytest.mark.parametrize(
    ("requests", "expected"),
    [
        ([("a.example.com", "x"), ("a.example.com", "y")], [("a.example.com", ("x", "y"))]),
        (
            [("*.api.example.com", "x"), ("*.example.com", "y"), ("deep.api.example.com", "z")],
            [("*.example.com", ("x", "y", "z"))],
        ),
        (
            [("example.com", "x"), ("*.example.com", "y")],
            [("*.example.com", ("y",)), ("example.com", ("x",))],
        ),
        (
            [("b.example.org", "x"), ("a.example.org", "x")],
            [("a.example.org", ("x",)), ("b.example.org", ("x",))],
        ),
        ([], []),
    ],
)
def test_fold_egress(
    requests: list[tuple[str, str]], expected: list[tuple[str, tuple[str, ...]]]
) -> None:
    """A wildcard never folds its own base; nested wildcards fold into the wider one."""
    assert [(r.pattern, r.sources) for r in fold_egress(requests)] == expected


def test_container_argv_runs_the_entry_link_the_image_build_made() -> None:
    """Both npx and uvx skills run the entry link directly: no package manager, no registry."""
    npm = PackageSpec(manager="npm", name="p", version_spec="", slug="s-1")
    pypi = PackageSpec(manager="pypi", name="t", version_spec="==1", slug="s-2")
    assert container_argv("npx", npm, ("a",)) == (f"{ENTRY_DIR}/s-1", "a")
    assert container_argv("uvx", pypi, ()) == (f"{ENTRY_DIR}/s-2",)


@pytest.mark.parametrize("key", ["@perstack/base", "a..b", "web_search", "x" * 214, "@a/.."])
def test_skill_slugs_are_filesystem_safe_and_distinct(key: str) -> None:
    """A slug is one safe path component, and near-identical keys still get distinct slugs."""
    slug = skill_slug(key)
    assert "/" not in slug
    assert slug not in {".", ".."}
    assert not slug.startswith(("-", "."))
    assert len(slug) <= 60
    assert skill_slug(key + "x") != slug


def test_plan_json_is_sorted_and_round_trips(rich: SandboxPlan) -> None:
    """The output of plan --json is sorted-key JSON that parses back into the same plan."""
    text = plan_to_json(rich)
    assert text.endswith("}\n")
    assert SandboxPlan.model_validate(json.loads(text)) == rich
    assert list(json.loads(text)) == sorted(json.loads(text))


def test_plan_text_shows_what_runs_which_names_and_where(rich: SandboxPlan) -> None:
    """The readable plan shows argv, env names, tool filters and egress with sources."""
    text = plan_to_text(rich)
    assert f"runs  {ENTRY_DIR}/" in text
    assert "env names  EXA_API_KEY, ZETA_TOKEN" in text
    assert "tools  only web_search_exa" in text
    assert "*.example.com  <- @perstack/base, remote, search" in text
    assert "(started on first use)" in text


def test_plan_marks_a_wildcard_over_a_shared_suffix_in_json_and_text() -> None:
    """A wildcard over a private-section suffix carries that suffix; the text flags the risk."""
    config, _ = parse_config(
        '[experts."e"]\ninstruction = "x"\n[experts."e".skills."s"]\ntype = "mcpStdioSkill"\n'
        'command = "npx"\npackageName = "p"\n'
        'allowedDomains = ["*.googleapis.com", "*.example.com"]\n'
    )
    sandbox = plan(config, "e")
    rules = json.loads(plan_to_json(sandbox))["egress"]
    assert [(r["pattern"], r["shared_suffix"]) for r in rules] == [
        ("*.example.com", None),
        ("*.googleapis.com", "googleapis.com"),
    ]
    text = plan_to_text(sandbox)
    mark = "[shared suffix: every tenant of googleapis.com is reachable]"
    assert f"*.googleapis.com  <- s  {mark}" in text
    assert "*.example.com  <- s\n" in text


def test_plan_text_of_pick_with_omit_says_pick_then_omit() -> None:
    """A skill with both filters reads as 'only these, then not those'."""
    config, _ = load_config(FIXTURES / "seed_004_complete.toml")
    text = plan_to_text(plan(config, "my-expert"))
    assert "tools  only analyze_typescript, then not analyze_python" in text


def test_plan_json_is_byte_identical_across_hash_seeds() -> None:
    """The same file gives the same bytes under different PYTHONHASHSEED values."""
    outputs = set()
    for seed in ("0", "1", "4242", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "perstack_sandbox",
                "plan",
                "reviewer",
                "--json",
                "-c",
                str(RICH),
            ],
            capture_output=True,
            check=True,
            env=env,
            timeout=60,
        )
        outputs.add(result.stdout)
    assert len(outputs) == 1
    assert b'"expert": "reviewer"' in outputs.pop()


def test_plan_is_pure_and_repeatable() -> None:
    """Planning twice from freshly parsed text gives equal plans."""
    text = RICH.read_text(encoding="utf-8")
    first = plan(parse_config(text)[0], "reviewer")
    second = plan(parse_config(text)[0], "reviewer")
    assert plan_to_json(first) == plan_to_json(second)


HIDDEN_TOML = """
envPath = ["secrets/app.env", "../shared.env", "/etc/perstack/ci.env"]

[experts."e"]
instruction = "test"
[experts."e".skills."local"]
type = "mcpStdioSkill"
command = "python3"
args = ["server.py"]
"""


def test_the_plan_names_every_env_file_and_where_it_is_hidden() -> None:
    """Defaults, envPath and --env-path files are all named; those in the folder get a target."""
    config, _ = parse_config(HIDDEN_TOML, config_dir="/srv/expert")
    sandbox = plan(config, "e", ("/srv/expert/cli.env", "/srv/expert/.env", "/tmp/x.env"))  # noqa: S108 - a path in a plan
    hidden = {h.path: (h.origin, h.target) for h in sandbox.hidden}
    assert hidden == {
        "/srv/expert/.env": ("default", f"{EXPERT_DIR}/.env"),
        "/srv/expert/.env.local": ("default", f"{EXPERT_DIR}/.env.local"),
        "/srv/expert/secrets/app.env": ("envPath", f"{EXPERT_DIR}/secrets/app.env"),
        "/srv/shared.env": ("envPath", None),
        "/etc/perstack/ci.env": ("envPath", None),
        "/srv/expert/cli.env": ("--env-path", f"{EXPERT_DIR}/cli.env"),
        "/tmp/x.env": ("--env-path", None),  # noqa: S108 - a path in a plan
    }
    assert [h.path for h in sandbox.hidden] == sorted(hidden)
    assert sandbox.hidden_name_prefix == ".env"


@pytest.mark.parametrize(
    ("config_dir", "name", "target"),
    [
        (".", "keys.env", f"{EXPERT_DIR}/keys.env"),
        (".", "../.env", None),
        ("/srv/expert/", "./sub/../x.env", f"{EXPERT_DIR}/x.env"),
        ("/srv/expert", "/srv/expert-other/.env", None),
        ("/srv/expert", "/srv/expert", None),
    ],
)
def test_an_env_path_is_inside_the_folder_only_when_it_lies_strictly_below_it(
    config_dir: str, name: str, target: str | None
) -> None:
    """Paths are normalised as text: `..` climbs out, a sibling with the same prefix is outside."""
    config, _ = parse_config('[experts."e"]\ninstruction = "t"\n', config_dir=config_dir)
    [found] = [h for h in plan(config, "e", (name,)).hidden if h.origin == "--env-path"]
    assert found.target == target


def test_plan_text_and_json_say_what_is_hidden() -> None:
    """`plan` shows each hidden file, the `.env*` rule, and the env files outside the folder."""
    config, _ = parse_config(HIDDEN_TOML, config_dir="/srv/expert")
    sandbox = plan(config, "e")
    text = plan_to_text(sandbox)
    assert f"hidden  {EXPERT_DIR}/secrets/app.env  (envPath env file" in text
    assert f"hidden  {EXPERT_DIR}/.env  (default env file" in text
    assert f"every other .env* file under {EXPERT_DIR}" in text
    assert "env file outside the folder (not mounted)  /srv/shared.env  (envPath)" in text
    assert f"hidden  every .git under {EXPERT_DIR}" in text
    loaded = json.loads(plan_to_json(sandbox))
    assert {h["target"] for h in loaded["hidden"]} >= {f"{EXPERT_DIR}/secrets/app.env", None}
    assert loaded["hidden_name_prefix"] == ".env"


def test_plan_command_takes_env_paths_like_the_run(tmp_path: Path) -> None:
    """`plan --env-path F` names F (made absolute against the current folder) as hidden."""
    config = tmp_path / "perstack.toml"
    config.write_text('[experts."e"]\ninstruction = "t"\n', encoding="utf-8")
    argv = [sys.executable, "-m", "perstack_sandbox", "plan", "e", "--json", "-c", str(config)]
    done = subprocess.run(
        [*argv, "--env-path", "keys.env"],
        capture_output=True,
        check=True,
        cwd=tmp_path,
        timeout=60,
        text=True,
    )
    hidden = json.loads(done.stdout)["hidden"]
    assert {
        "origin": "--env-path",
        "path": str(tmp_path / "keys.env"),
        "target": "/expert/keys.env",
    } in hidden
