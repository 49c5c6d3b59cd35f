"""What every Python process of a Ray worker set up by the keyless plugin runs at its start.

The plugin puts :data:`SITE_DIRECTORY` first on the worker's ``PYTHONPATH``; its
``sitecustomize`` runs the one it shadows, then :func:`start` in a process started with
``$KEYLESS_RAY``. No ``worker_process_setup_hook`` is needed (Ray 2.60 honours it only in a
job-level runtime env) and the task's code changes nothing: with a ``target.aws``, the process
serves itself its own AWS identity (:func:`credential_endpoint`), which boto3, pyarrow's
``S3FileSystem`` (Ray Data, Ray Train storage) and the AWS CLI read through the standard
container-credentials variables, refreshed for as long as the process lives. With a
``target.azure`` (unless ``delivery.azure: token_file``), the process likewise serves itself
Azure access tokens on a loopback managed-identity endpoint (:func:`azure_endpoint`), which
azure-identity's ``DefaultAzureCredential`` reads at any subject-token lifetime (it re-reads
``AZURE_FEDERATED_TOKEN_FILE`` only every 600 s). Other targets keep the node's token files
and their SDKs' own variables.
"""

from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from keyless.delivery import ENDPOINT_SHADOWED_VARIABLES

from .names import MANIFEST_VARIABLE
from .worker import _manifest, identity, worker_context

if TYPE_CHECKING:
    from keyless.delivery.azure_endpoint import AzureEndpoint
    from keyless.delivery.credential_server import CredentialServer

__all__ = ["SITE_DIRECTORY", "azure_endpoint", "credential_endpoint", "start"]

#: The directory holding keyless_ray's ``sitecustomize`` (see the module docstring).
SITE_DIRECTORY = Path(__file__).resolve().parent / "site"

_lock = threading.Lock()
_servers: dict[str, CredentialServer] = {}
_azure_servers: dict[str, AzureEndpoint] = {}


def start() -> None:
    """Serve this process's AWS identity (:func:`credential_endpoint`) when its runtime env's
    config has a ``target.aws``, and its Azure identity (:func:`azure_endpoint`) when it has a
    ``target.azure`` delivered through the endpoint (the default); nothing otherwise."""
    manifest = _manifest()
    targets = manifest.get("targets", {})
    if "aws" in targets:
        credential_endpoint()
    delivery = manifest.get("config", {}).get("delivery") or {}
    if "azure" in targets and delivery.get("azure", "endpoint") == "endpoint":
        azure_endpoint()


def azure_endpoint() -> dict[str, str]:
    """Serve this process's Azure tokens on a loopback managed-identity endpoint
    (:class:`keyless.delivery.azure_endpoint.AzureEndpoint`) and point its environment at it:
    ``IDENTITY_ENDPOINT``, ``IDENTITY_HEADER`` (the endpoint's capability, for this process
    and the ones it starts), ``AZURE_CLIENT_ID``, ``AZURE_TENANT_ID``; the federated-token
    file and the variables that would select another managed-identity protocol are removed
    from ``os.environ``. The endpoint exchanges the node's fresh subject token itself, one
    cached access token per resource. One endpoint per config per process, living as long as
    the process; calling it again is a no-op. Returns the variables set."""
    from keyless.delivery.azure_endpoint import (
        AZURE_ENDPOINT_SHADOWED_VARIABLES,
        AzureEndpoint,
    )

    key = str(_manifest()["id"])
    with _lock:
        server = _azure_servers.get(key)
        if server is None:
            server = AzureEndpoint(identity("azure")).start()
            atexit.register(server.stop)
            _azure_servers[key] = server
    env = server.env()
    for name in AZURE_ENDPOINT_SHADOWED_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(env)
    return env


def credential_endpoint() -> dict[str, str]:
    """Serve this process's AWS credentials on a loopback container-credentials endpoint and
    point its environment at it (pyarrow ``S3FileSystem()``, boto3, the AWS CLI a task starts:
    consumers that never refresh static keys, or would share one session name). Returns the
    variables set (a URL and paths); the web-identity variables are removed from
    ``os.environ`` since SDKs try them first. Each request is served the worker's context of
    that moment (:func:`worker_context`: the Ray task, the Train rank once assigned). One
    endpoint per config per process, living as long as the process; its authorization token
    file sits in the node's token directory, removed with it. The plugin starts it in every
    Python process of a worker (:mod:`keyless_ray.bootstrap`): calling it again is a no-op."""
    from keyless.delivery import TokenDirectory, endpoint_environment
    from keyless.delivery.credential_server import CredentialServer

    manifest = _manifest()
    aws = identity("aws")
    key = str(manifest["id"])
    with _lock:
        server = _servers.get(key)
        if server is None:
            node_directory = Path(os.environ[MANIFEST_VARIABLE]).parent
            directory = TokenDirectory(node_directory / f"endpoint-{os.getpid()}")
            server = CredentialServer(aws, token_dir=directory,
                                      context_of=worker_context).start()
            atexit.register(directory.cleanup)
            atexit.register(server.stop)
            _servers[key] = server
    env = endpoint_environment(aws, server.env())
    for name in ENDPOINT_SHADOWED_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(env)
    return env


