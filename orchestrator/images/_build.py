"""Image builds with streamed progress, and the host-side inputs of a build context.

A build streams its steps to a progress callback (none by default: the library never prints).
When a step fails, the `ImageBuildError` carries that step's header and its last output lines,
not the whole log. Build output is written by package install scripts (untrusted code), so
every line and error passes through `printable` before it reaches a callback, a message or the
terminal. Colour codes are dropped first: the engine wraps each RUN step's stderr in red, and
escaped they would only be noise.
Registry locations are read from the host's own package managers, never written here.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections import deque
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import docker.errors

from perstack_sandbox.docker_edge import client, docker_errors, owner_labels
from perstack_sandbox.errors import EngineError, ImageBuildError, UsageError
from perstack_sandbox.text import printable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from pathlib import Path

Progress = "Callable[[str], None]"

_COLOUR: Final = re.compile(r"\x1b\[[0-9;]*m")  # SGR only: colours, nothing that moves or writes
STEP_TAIL_LINES: Final = 60  # lines of a failed step's output kept in the error
HOST_TOOL_TIMEOUT_S: Final = 600  # npm pack / pip download of ~60 MB through a slow proxy
# Where the host's package managers name their index, in the order uv and pip read them.
PYTHON_INDEX_VARIABLES: Final = ("UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL")
PIP_INDEX_SETTING: Final = "pip's global.index-url (pip config)"
NPM_REGISTRY_SETTING: Final = "npm's registry setting (npm_config_registry or .npmrc)"


def no_progress(_line: str) -> None:
    """Drop a progress line: the library's default (it never prints; callers pass a sink)."""


def stderr_progress(line: str) -> None:
    """Write a progress line on stderr, control and bidi characters escaped: the CLI's sink."""
    sys.stderr.write(printable(line) + "\n")
    sys.stderr.flush()


def build_image(  # noqa: PLR0913 - the build's inputs, each needed
    context: Path,
    *,
    dockerfile: str,
    tag: str,
    buildargs: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    network_mode: str | None = None,
    progress: Callable[[str], None] = no_progress,
    untagged: bool = False,
) -> str:
    """Build `context` with the classic builder, streaming steps; return the image id.

    `network_mode` puts every RUN step on that network (a fenced build's internal network).
    With `untagged`, `tag` only names the build in messages: the caller tags the image once
    its labels are complete (`label_image`), so an interrupted build never leaves the tag on
    an image without them.

    Raises:
        ImageBuildError: a step failed (the error holds its output).
        EngineError: the engine refused or could not be reached.

    """
    with docker_errors(f"building {tag}"):
        events = client().api.build(
            path=str(context),
            dockerfile=dockerfile,
            tag=None if untagged else tag,
            buildargs=dict(buildargs or {}),
            labels=dict(labels or {}),
            network_mode=network_mode,
            rm=True,
            forcerm=True,
            decode=True,
        )
        return _follow(events, tag, progress)


def label_image(image_id: str, *, tag: str, labels: Mapping[str, str]) -> str:
    """Add `labels` to an image and tag it `tag` (a metadata-only build `FROM` it); return its id.

    The tag and the labels arrive together, at the end of that build.

    Raises:
        ImageBuildError: the engine refused the build.
        EngineError: the engine could not be reached.

    """
    dockerfile = io.BytesIO(f"FROM {image_id}\n".encode())
    with docker_errors(f"labelling {tag}"):
        events = client().api.build(
            fileobj=dockerfile, tag=tag, labels=dict(labels), rm=True, decode=True
        )
        return _follow(events, tag, lambda _line: None)


def image_label(name: str, label: str) -> str | None:
    """Return one label of a local image (None when it has no such label).

    Raises:
        EngineError: the image is missing or the engine could not be reached.

    """
    with docker_errors(f"inspecting image {name}"):
        return client().images.get(name).labels.get(label)


def remove_image(image: str) -> None:
    """Remove an image this process built (a resolution's throw-away result); absent is fine.

    Raises:
        EngineError: the engine refused or could not be reached.

    """
    with docker_errors(f"removing image {image}"):
        try:
            client().images.remove(image, force=False, noprune=False)
        except docker.errors.ImageNotFound:
            return


def image_files(image: str, folder: str, *, limit: int) -> dict[str, bytes]:
    """Return the regular files directly in `folder` of an image (never started: created only).

    Raises:
        ImageBuildError: the folder's archive is over `limit` bytes or unreadable.
        EngineError: the engine refused or could not be reached.

    """
    with docker_errors(f"reading {folder} of image {image}"):
        container = client().containers.create(image, command=["true"], labels=owner_labels())
        try:
            stream, _ = container.get_archive(folder)
            raw = bytearray()
            for chunk in stream:
                raw += chunk
                if len(raw) > limit:
                    raise ImageBuildError(f"{folder} of the resolution is over {limit} bytes")
        finally:
            container.remove(force=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as archive:
            return {
                member.name.rpartition("/")[2]: handle.read()
                for member in archive.getmembers()
                if member.isfile()
                and member.name.count("/") == 1
                and (handle := archive.extractfile(member)) is not None
            }
    except tarfile.TarError as exc:
        raise ImageBuildError(f"{folder} of the resolution is not readable") from exc


def _follow(events: Iterable[dict[str, object]], tag: str, progress: Callable[[str], None]) -> str:
    step = "(before the first step)"
    output: deque[str] = deque(maxlen=STEP_TAIL_LINES)
    image_id = ""
    for event in events:
        if "error" in event:
            tail = "\n".join(output)
            raise ImageBuildError(
                f"building {tag} failed at {step}\n--- step output ---\n{tail}\n"
                f"--- error ---\n{printable(str(event['error']))}"
            )
        aux = event.get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
            image_id = aux["ID"]
        text = event.get("stream")
        if not isinstance(text, str):
            continue
        for raw in text.splitlines():
            line = printable(_COLOUR.sub("", raw))
            if line.startswith("Step "):
                step, output = line, deque(maxlen=STEP_TAIL_LINES)
            elif line.strip():
                output.append(line)
            if line.strip():
                progress(line)
    if not image_id:
        raise ImageBuildError(f"building {tag} produced no image")
    return image_id


def last_marker(lines: Iterable[str], marker: str) -> str | None:
    """Return what follows `marker` on the last line that starts with it."""
    found = None
    for line in lines:
        if line.startswith(marker):
            found = line[len(marker) :]
    return found


def _run_host_tool(argv: list[str], *, what: str, cwd: Path | None = None) -> str:
    tool = shutil.which(argv[0])
    if tool is None:
        raise EngineError(f"{what}: `{argv[0]}` is not installed on this host")
    try:
        done = subprocess.run(  # noqa: S603 - a fixed tool with our own arguments
            [tool, *argv[1:]],
            capture_output=True,
            text=True,
            check=False,
            cwd=cwd,
            timeout=HOST_TOOL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"{what}: `{' '.join(argv)}` timed out") from exc
    if done.returncode != 0:
        raise EngineError(f"{what}: `{' '.join(argv)}` failed:\n{done.stderr.strip()[-2000:]}")
    return done.stdout


@functools.cache
def npm_registry() -> str:
    """Return the npm registry the host's npm is configured with ('' when npm is absent).

    Raises:
        UsageError: the registry URL holds credentials (see `_without_credentials`).

    """
    if shutil.which("npm") is None:
        return ""
    try:
        out = _run_host_tool(["npm", "config", "get", "registry"], what="reading npm config")
    except EngineError:
        return ""
    value = out.strip().splitlines()[-1].strip() if out.strip() else ""
    return _without_credentials(value, NPM_REGISTRY_SETTING) if _is_remote(value) else ""


@functools.cache
def python_index_url() -> str:
    """Return the host's default Python package index when it is set and remote ('' if not).

    Read from uv's and pip's own settings (environment, then pip config); a `file://` index on
    the host means nothing inside a container, so only http(s) URLs are passed on.

    Raises:
        UsageError: the index URL holds credentials (see `_without_credentials`).

    """
    for name in PYTHON_INDEX_VARIABLES:
        value = os.environ.get(name, "")
        if _is_remote(value):
            return _without_credentials(value, name)
    try:
        out = _run_host_tool(
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
            what="reading pip config",
        )
    except EngineError:
        return ""
    value = out.strip()
    return _without_credentials(value, PIP_INDEX_SETTING) if _is_remote(value) else ""


def _is_remote(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def _without_credentials(url: str, setting: str) -> str:
    """Return `url` when it carries no `user:password@` nor query; refuse it otherwise.

    The URL becomes a build argument of the per-expert image: the classic builder records
    build arguments on every RUN layer (`docker history --no-trunc` shows them), and the
    packages' install scripts, untrusted code, read them. The message names the setting,
    never the URL: any part of it may be the secret. A query string is refused too: it is
    where some indexes take a token (`?token=...`); a token in the path cannot be told from
    an ordinary path, which the README says (decision 72).

    Raises:
        UsageError: the URL has a user name, a password or a query string.

    """
    try:
        parts = urlsplit(url)
        has_userinfo = parts.username is not None or parts.password is not None
        has_credentials = has_userinfo or bool(parts.query)
    except ValueError:  # an unparsable URL: whatever it holds, it is not passed on
        has_credentials = True
    if has_credentials:
        raise UsageError(
            f"{setting} names a package index whose URL may hold credentials (user:token@host "
            "or a query string): "
            "perstack-sandbox refuses it, because a build argument stays readable in the "
            "image's history and by every package's install script. Point it at an index "
            "that needs no credentials (a local mirror or pull-through proxy) for the build"
        )
    return url


def npm_pack(specs: Iterable[str], destination: Path) -> list[Path]:
    """Fetch registry tarballs with the host's npm (its registry, proxy and CA settings).

    Raises:
        EngineError: npm is missing or the fetch failed.

    """
    out = _run_host_tool(
        ["npm", "pack", "--json", "--pack-destination", str(destination), *specs],
        what="fetching Node.js and npm with the host's npm",
        cwd=destination,
    )
    try:
        packed = json.loads(out[out.index("[") :])
    except ValueError as exc:
        raise EngineError(f"unexpected `npm pack` output: {out[:200]!r}") from exc
    return [destination / entry["filename"] for entry in packed]


def pip_download_wheel(requirement: str, destination: Path) -> Path:
    """Download one binary wheel with the host's pip (its index, proxy and CA settings).

    Raises:
        EngineError: pip is missing or the download failed.

    """
    before = set(destination.glob("*.whl"))
    _run_host_tool(
        [
            sys.executable,
            *("-m", "pip", "download", "--no-deps", "--only-binary=:all:"),
            *("--dest", str(destination), requirement),
        ],
        what=f"downloading {requirement} with the host's pip",
    )
    wheels = sorted(set(destination.glob("*.whl")) - before) or sorted(destination.glob("*.whl"))
    if not wheels:
        raise EngineError(f"pip downloaded no wheel for {requirement}")
    return wheels[-1]
