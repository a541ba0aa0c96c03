"""The Kubernetes edge: the API client from kubeconfig or in-cluster config, and error mapping.

Only this package imports `kubernetes_asyncio` (an import-linter contract). Every error of the
client, its transport or its config loader is re-raised as `EngineError` by `kube_errors()`,
so nothing above sees a dependency's exception.
"""

from __future__ import annotations

import contextlib
import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException

from perstack_sandbox.errors import EngineError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

IN_CLUSTER_ENV: Final = "KUBERNETES_SERVICE_HOST"  # set in every pod: use its service account
KUBECONFIG_ENV: Final = "KUBECONFIG"
CONTEXT_ENV: Final = "PERSTACK_SANDBOX_K8S_CONTEXT"
NOT_FOUND: Final = 404
CONFLICT: Final = 409


@contextlib.contextmanager
def kube_errors(action: str) -> Iterator[None]:
    """Re-raise client, transport and config errors as `EngineError`, naming `action`.

    Raises:
        EngineError: the cluster refused `action` or could not be reached.

    """
    try:
        yield
    except ApiException as exc:
        reason = exc.reason or "refused"
        raise EngineError(f"{action}: the cluster answered {exc.status} ({reason})") from exc
    except ConfigException as exc:
        raise EngineError(
            f"{action}: no cluster configuration ({exc}); set ${KUBECONFIG_ENV} or run in a pod"
        ) from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise EngineError(f"{action}: the cluster cannot be reached ({exc})") from exc


async def load_configuration() -> client.Configuration:
    """Return the cluster configuration: in-cluster in a pod, else kubeconfig.

    `$KUBECONFIG` (else ~/.kube/config) and `$PERSTACK_SANDBOX_K8S_CONTEXT` (else the current
    context) choose the cluster, as for kubectl.

    Raises:
        EngineError: neither configuration can be loaded.

    """
    configuration = client.Configuration()
    with kube_errors("loading the cluster configuration"):
        if os.environ.get(IN_CLUSTER_ENV) and not os.environ.get(KUBECONFIG_ENV):
            # the loader is untyped; its one argument is the configuration it fills
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(
                config_file=os.environ.get(KUBECONFIG_ENV) or None,
                context=os.environ.get(CONTEXT_ENV) or None,
                client_configuration=configuration,
                persist_config=False,
            )
    return configuration


@asynccontextmanager
async def api_client(
    configuration: client.Configuration | None = None,
) -> AsyncIterator[client.ApiClient]:
    """Yield an API client for `configuration` (else the loaded one); closed on exit.

    Raises:
        EngineError: the configuration cannot be loaded.

    """
    configuration = configuration or await load_configuration()
    async with client.ApiClient(configuration) as api:
        yield api


def is_status(exc: BaseException, status: int) -> bool:
    """Return whether `exc` (or its cause) is the cluster answering `status`."""
    cause = exc.__cause__ if isinstance(exc, EngineError) else exc
    return isinstance(cause, ApiException) and cause.status == status
