"""The hosts a per-expert build must reach, derived at build time from the package managers.

A fenced build (see `images`) may reach only its registries, through its own proxy, so the
proxy's allowlist is exactly:

- npm: the host of `npm config get registry`, plus the hosts its packuments name as tarball
  locations (usually the same host, but a mirror may hand out tarballs from elsewhere);
- PyPI: the host of the index uv will use (the host's uv/pip setting, else pip's own default
  index), plus the hosts that index's project pages link files from (a CDN host, typically).

Nothing here names a registry: every URL comes from the host's npm and pip, or from what those
registries answer. Only https on port 443 can be allowed (the proxy tunnels nothing else).
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
from typing import TYPE_CHECKING, Final
from urllib.parse import quote, urljoin, urlsplit

from perstack_sandbox.errors import EngineError
from perstack_sandbox.images import _build
from perstack_sandbox_proxy.hosts import HostRejected, canonicalise_host

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import httpx2

    from perstack_sandbox.plan import PackageSpec

FETCH_TIMEOUT_S: Final = 60.0  # one metadata document through a slow intercepting proxy
PIP_TIMEOUT_S: Final = 60  # a Python start that imports pip
NPM_ABBREVIATED: Final = "application/vnd.npm.install-v1+json"
PYPI_SIMPLE_JSON: Final = "application/vnd.pypi.simple.v1+json"
HTTPS_PORT: Final = 443
_HREF: Final = re.compile(r"""href\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
_PIP_DEFAULT_INDEX: Final = (
    "from pip._internal.models.index import PyPI; print(PyPI.simple_url)"  # pip's own default
)


def python_index() -> str:
    """Return the index uv must use: the host's uv/pip setting, else pip's built-in default.

    Raises:
        EngineError: neither is known (no index configured and no pip on the host).
        UsageError: the configured index URL holds credentials (decision 72).

    """
    configured = _build.python_index_url()
    if configured:
        return configured
    try:
        done = subprocess.run(  # noqa: S603 - our interpreter, a fixed snippet
            [sys.executable, "-c", _PIP_DEFAULT_INDEX],
            capture_output=True,
            text=True,
            check=False,
            timeout=PIP_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise EngineError("reading pip's default index timed out") from exc
    url = done.stdout.strip()
    if done.returncode != 0 or not url.startswith("https://"):
        raise EngineError(
            "cannot tell which Python package index to use: set UV_DEFAULT_INDEX "
            "(or pip's global.index-url), or install pip on this host"
        )
    return url


def npm_registry() -> str:
    """Return the npm registry of the host's npm.

    Raises:
        EngineError: the host has no npm, or it names no http(s) registry.
        UsageError: the registry URL holds credentials (decision 72).

    """
    registry = _build.npm_registry()
    if not registry:
        raise EngineError("cannot tell which npm registry to use: install npm on this host")
    return registry


def build_hosts(packages: Sequence[PackageSpec]) -> list[str]:
    """Return the sorted hosts a build of `packages` must reach (see the module docstring).

    Raises:
        EngineError: a registry location is unknown, not https on 443, or did not answer.
        UsageError: a registry URL holds credentials (decision 72).

    """
    hosts: set[str] = set()
    npm_names = [p.name for p in packages if p.manager == "npm"]
    pypi_names = [p.name for p in packages if p.manager == "pypi"]
    with _http_client() as http:
        if npm_names:
            registry = npm_registry()
            hosts.add(https_host(registry))
            for name in npm_names:
                hosts.update(https_host(url) for url in _npm_tarballs(http, registry, name))
        if pypi_names:
            index = python_index()
            hosts.add(https_host(index))
            for name in pypi_names:
                hosts.update(https_host(url) for url in _pypi_files(http, index, name))
    return sorted(hosts)


def _http_client() -> httpx2.Client:
    # Imported here: a run whose image is built already never reads a registry.
    import httpx2  # noqa: PLC0415

    return httpx2.Client(
        verify=ssl.create_default_context(), timeout=FETCH_TIMEOUT_S, follow_redirects=True
    )


def https_host(url: str) -> str:
    """Return the canonical host of an https URL on the default port.

    Raises:
        EngineError: the URL is not https, names a port, or its host is not a valid name.

    """
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.port not in {None, HTTPS_PORT}:
        raise EngineError(f"a fenced build reaches registries over https on 443 only: {url}")
    try:
        return canonicalise_host(parts.hostname or "")
    except HostRejected as exc:
        raise EngineError(f"registry host of {url} cannot be allowed: {exc}") from exc


def _get(http: httpx2.Client, url: str, accept: str) -> httpx2.Response | None:
    """GET registry metadata; None for an unknown package (its install step then says so)."""
    import httpx2  # noqa: PLC0415 - loaded by `_http_client` already

    try:
        response = http.get(url, headers={"Accept": accept})
        if response.status_code == httpx2.codes.NOT_FOUND:
            return None
        response.raise_for_status()
    except httpx2.HTTPError as exc:
        raise EngineError(f"reading registry metadata {url}: {exc}") from exc
    return response


def _npm_tarballs(http: httpx2.Client, registry: str, name: str) -> Iterable[str]:
    url = f"{registry.rstrip('/')}/{quote(name, safe='@')}"
    response = _get(http, url, NPM_ABBREVIATED)
    if response is None:
        return set()
    try:
        versions = response.json().get("versions", {})
    except (ValueError, AttributeError) as exc:
        raise EngineError(f"reading registry metadata {url}: not a packument") from exc
    return {
        v["dist"]["tarball"]
        for v in versions.values()
        if isinstance(v, dict) and isinstance(v.get("dist"), dict) and "tarball" in v["dist"]
    }


def _pypi_files(http: httpx2.Client, index: str, name: str) -> Iterable[str]:
    normalised = re.sub(r"[-_.]+", "-", name).lower()
    response = _get(http, f"{index.rstrip('/')}/{normalised}/", f"{PYPI_SIMPLE_JSON}, text/html")
    if response is None:
        return set()
    page = str(response.url)
    if "json" in response.headers.get("content-type", ""):
        try:
            files = json.loads(response.content).get("files", [])
        except (ValueError, AttributeError) as exc:
            raise EngineError(f"reading registry metadata {page}: not a project page") from exc
        links = [f["url"] for f in files if isinstance(f, dict) and isinstance(f.get("url"), str)]
    else:
        links = _HREF.findall(response.text)
    return {page, *(urljoin(page, link) for link in links)}


_RELEASE: Final = re.compile(r"^\d+(\.\d+)*$")  # a final release: no pre, post or dev part


def latest_version(manager: str, name: str) -> str:
    """Return the newest release of a package in its registry ('' when it cannot be told).

    npm's `latest` dist-tag; for PyPI the highest final release the index lists.

    Raises:
        EngineError: the registry could not be read.

    """
    with _http_client() as http:
        if manager == "npm":
            return newest_npm(http, npm_registry(), name)
        return newest_pypi(http, python_index(), name)


def newest_npm(http: httpx2.Client, registry: str, name: str) -> str:
    """Return the `latest` dist-tag of an npm package ('' when the registry names none).

    Raises:
        EngineError: the registry could not be read.

    """
    url = f"{registry.rstrip('/')}/{quote(name, safe='@')}"
    response = _get(http, url, NPM_ABBREVIATED)
    tags = _json(response, url).get("dist-tags") if response is not None else None
    return str(tags.get("latest", "")) if isinstance(tags, dict) else ""


def newest_pypi(http: httpx2.Client, index: str, name: str) -> str:
    """Return the highest final release a PyPI project page lists ('' when none).

    Raises:
        EngineError: the index could not be read.

    """
    normalised = re.sub(r"[-_.]+", "-", name).lower()
    url = f"{index.rstrip('/')}/{normalised}/"
    response = _get(http, url, PYPI_SIMPLE_JSON)
    versions = _json(response, url).get("versions") if response is not None else None
    if not isinstance(versions, list):
        return ""
    releases = [str(v) for v in versions if _RELEASE.match(str(v))]
    return max(releases, key=lambda v: tuple(int(p) for p in v.split(".")), default="")


def _json(response: httpx2.Response, url: str) -> dict[str, object]:
    try:
        loaded = response.json()
    except ValueError as exc:
        raise EngineError(f"reading registry metadata {url}: not JSON") from exc
    return loaded if isinstance(loaded, dict) else {}
