"""The environment of a command keyless starts for a worker (``keyless exec``, the Airflow
hook's and the Prefect block's ``worker_env()``): one builder for every host.

What the child gets, for the ``with`` body:

* the parent's environment (``inherit=True``) less every variable that would win over keyless
  in a vendor SDK's default chain (static AWS keys, other clouds' secrets);
* token files kept fresh plus the SDKs' own variables (paths and ids only) for each target;
* for AWS, when the config narrows each worker's credentials (a session policy, policy ARNs)
  or writes a template with a per-process field (``{rank}``, ``{local_rank}``, ``{node}``),
  or when asked (``credential_endpoint=True``): a loopback credential endpoint serving each
  calling process of the launch its own identity (:mod:`.launch`). That is what makes
  ``keyless exec --config F -- torchrun ...`` give every rank its own session and policy: the
  SDK variables would carry one identity, rendered with the launcher's rank, to every rank;
* for Azure, unless ``delivery.azure: token_file``: a loopback managed-identity endpoint
  (:mod:`.azure_endpoint`) that azure-identity's ``DefaultAzureCredential`` /
  ``ManagedIdentityCredential`` use (``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``), with
  ``AZURE_FEDERATED_TOKEN_FILE`` removed: azure-identity re-reads that file only every 600 s,
  so subject tokens shorter than that fail; the endpoint exchanges fresh ones itself. Where
  the calling process can be identified (Linux), only the launch's processes are served.

Nothing secret is put into the environment, but for one capability: ``IDENTITY_HEADER``, the
random value the Azure endpoint requires (azure-identity reads it from nowhere else; see
:mod:`.azure_endpoint`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ..context import fields_used
from ..errors import ConfigError
from ..identity import Keyless
from .launch import Launch
from .tokenfiles import (
    ENDPOINT_SHADOWED_VARIABLES,
    TokenDirectory,
    TokenFileKeeper,
    delivery_audiences,
    endpoint_environment,
    narrowing_fields,
    sdk_environment,
    shadowing_variables,
)

__all__ = ["PER_PROCESS_FIELDS", "ChildEnvironment", "aws_needs_endpoint", "child_environment"]

logger = logging.getLogger("keyless.delivery.child")

#: Template fields whose value differs between the processes one command starts (torchrun's
#: ranks): an AWS template naming one is served per calling process through the endpoint.
PER_PROCESS_FIELDS = frozenset({"rank", "local_rank", "node"})


def aws_needs_endpoint(identity: Keyless) -> str | None:
    """The config field that makes a child need the per-process credential endpoint for AWS
    (a narrowing field, or a template naming a per-process field), or None."""
    from ..targets.aws import aws_templates

    target = identity.config.target.aws
    if target is None:
        return None
    narrowing = narrowing_fields(identity).get("aws")
    if narrowing is not None:
        return narrowing
    for name, template in aws_templates(target).items():
        if fields_used(template) & PER_PROCESS_FIELDS:
            return name
    return None


@dataclass
class ChildEnvironment:
    """What :func:`child_environment` yields: ``env``, the child's complete environment, and
    the :class:`Launch` its processes belong to when an endpoint serves them (AWS's, or
    Azure's where callers can be identified)."""

    env: dict[str, str]
    launch: Launch | None = None

    def started(self, pid: int) -> None:
        """Tell the endpoint the pid of the command started with ``env``: only it and its
        descendants are served (call it right after starting the command)."""
        if self.launch is not None:
            self.launch.started(pid)


@contextlib.contextmanager
def child_environment(identity: Keyless, *, token_dir: str | None = None,
                      credential_endpoint: bool = False, inherit: bool = True,
                      environ: Mapping[str, str] | None = None,
                      expect_start: bool = False,
                      gcp_metadata: bool = False) -> Iterator[ChildEnvironment]:
    """Token files, SDK variables and (see the module docstring) the AWS per-process
    credential endpoint and the Azure managed-identity endpoint, kept up for the ``with``
    body; stopped and removed, with every token file, after.

    ``environ`` is the parent environment to inherit (default ``os.environ``; ignored with
    ``inherit=False``, which yields only keyless's own variables). ``expect_start=True``
    promises a call to :meth:`ChildEnvironment.started` (``keyless exec``): the endpoint then
    serves only that command's process tree. ``gcp_metadata=True`` (opt in) also serves the
    GCP target's token on a loopback GCE-metadata-compatible endpoint
    (:mod:`.gcp_metadata`) for consumers that know only the metadata server. Raises
    :class:`ConfigError` for a config whose narrowing no delivery can carry (a GCP access
    boundary: use the objects in-process), or ``gcp_metadata`` without a ``target.gcp``.
    """
    from .azure_endpoint import (
        AZURE_ENDPOINT_SHADOWED_VARIABLES,
        AzureEndpoint,
        uses_azure_endpoint,
    )
    from .credential_server import CredentialServer
    from .gcp_metadata import GCP_METADATA_SHADOWED_VARIABLES, GcpMetadataServer
    from .peer import peer_support

    endpoint_field = aws_needs_endpoint(identity)
    use_endpoint = identity.config.target.aws is not None and \
        (credential_endpoint or endpoint_field is not None)
    if use_endpoint and endpoint_field is not None and not credential_endpoint:
        logger.info("keyless: %s differs per worker: AWS credentials are served to each "
                    "process through the loopback credential endpoint", endpoint_field)
    directory = TokenDirectory(token_dir or identity.config.delivery.token_dir)
    use_azure = uses_azure_endpoint(identity)
    exclude = (("aws",) if use_endpoint else ()) + (("azure",) if use_azure else ()) + \
        (("gcp",) if gcp_metadata else ())  # one path for GCP: the endpoint (per rank)
    audiences = delivery_audiences(identity, exclude=exclude)
    keeper = TokenFileKeeper(identity, directory, audiences) if audiences else None
    server: CredentialServer | None = None
    azure: AzureEndpoint | None = None
    metadata: GcpMetadataServer | None = None
    if gcp_metadata and identity.config.target.gcp is None:
        raise ConfigError("keyless: the GCP metadata endpoint needs a target.gcp; fix: add one "
                          "or leave out --gcp-metadata", field="target.gcp")
    launch: Launch | None = None
    if use_endpoint or gcp_metadata or (use_azure and peer_support() is None):
        launch = Launch(expect_root=expect_start)
    try:
        added: dict[str, str] = {}
        if keeper is not None:
            keeper.start()
            added.update(sdk_environment(identity, keeper.files, exclude=exclude))
        if use_endpoint:
            server = CredentialServer(identity, token_dir=directory, launch=launch).start()
            if endpoint_field is None:  # one identity for all: a broken role fails here
                server.credentials_document()
            else:  # per process: the source at least must work before a child starts
                identity.subject_token(identity.target_audience("aws"))
            added.update(endpoint_environment(identity, server.env()))
        if use_azure:  # the source at least must work before a child starts
            identity.subject_token(identity.target_audience("azure"))
            azure = AzureEndpoint(identity, launch=launch).start()
            added.update(azure.env())
        if gcp_metadata:
            metadata = GcpMetadataServer(identity, launch=launch).start()
            added.update(metadata.env())
        if launch is not None:
            added.update(launch.environment())
        dropped = shadowing_variables(identity) + \
            (ENDPOINT_SHADOWED_VARIABLES if use_endpoint else ()) + \
            (AZURE_ENDPOINT_SHADOWED_VARIABLES if use_azure else ()) + \
            (GCP_METADATA_SHADOWED_VARIABLES if gcp_metadata else ())
        parent = (os.environ if environ is None else environ) if inherit else {}
        env = {key: value for key, value in parent.items() if key not in dropped}
        env.update(added)
        yield ChildEnvironment(env=env, launch=launch)
    finally:
        if server is not None:
            server.stop()
        if azure is not None:
            azure.stop()
        if metadata is not None:
            metadata.stop()
        if keeper is not None:
            keeper.stop()
        directory.cleanup()
