"""`render kubernetes EXPERT`: the manifests of the Kubernetes backend, for review and GitOps."""

from __future__ import annotations

from typing import Annotated

import typer

from perstack_sandbox.cli._app import (
    DEFAULT_CONFIG,
    EXAMPLE_CONFIG,
    PROGRAM,
    ConfigOption,
    ExpertArgument,
    app,
    command,
    warn,
)
from perstack_sandbox.cli._help import PlainGroup

render_app = typer.Typer(
    cls=PlainGroup,
    help="Print the objects a backend would create for an Expert, without creating them.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(render_app, name="render")


@command(
    f"{PROGRAM} render kubernetes demo {EXAMPLE_CONFIG}",
    f"{PROGRAM} render kubernetes demo --image registry.example/expert:1 {EXAMPLE_CONFIG}",
    name="kubernetes",
    group=render_app,
)
def render_kubernetes(
    expert: ExpertArgument,
    config: ConfigOption = DEFAULT_CONFIG,
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            metavar="IMAGE",
            help="The Expert's image as the cluster pulls it (default: a placeholder, since "
            "its tag is known only after `build`).",
        ),
    ] = None,
    proxy_image: Annotated[
        str | None,
        typer.Option(
            "--proxy-image",
            metavar="IMAGE",
            help="The proxy's image as the cluster pulls it (default: its local tag).",
        ),
    ] = None,
) -> None:
    """Print the namespace, pods, Service, NetworkPolicies and Secret of one run, as YAML.

    The same input prints the same bytes; no secret value is in them (skills get theirs over
    stdin, and each proxy token is a placeholder minted per run). Settings come from
    $PERSTACK_SANDBOX_K8S_* as for `--backend kubernetes`.
    """
    from perstack_sandbox import images, kube  # noqa: PLC0415 - keeps --help fast
    from perstack_sandbox.config import load_config  # noqa: PLC0415
    from perstack_sandbox.plan import plan  # noqa: PLC0415

    loaded, warnings = load_config(config)
    for warning in warnings:
        warn(str(warning))
    sandbox = plan(loaded, expert)
    kube.check_plan(sandbox, None)
    manifests = kube.rendered_manifests(
        sandbox,
        kube.settings_from_env(),
        sandbox_image=image or f"{images.EXPERT_REPO}:set-with---image",
        proxy_image=proxy_image or images.proxy_image_name(),
    )
    typer.echo(kube.to_yaml(manifests), nl=False)
