"""The ways out of a :class:`~prefect_keyless.KeylessCredentials` block: AWS clients and
sessions, Google and Azure credentials, a raw token, and the environment of a subprocess; all
on the calling task run's own identity (:meth:`~prefect_keyless.KeylessCredentials.identity`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import boto3

    from keyless import Keyless

__all__ = ["Clients"]


class Clients:
    """Mixed into the block: everything here asks :meth:`identity` for the task run's one
    :class:`~keyless.Keyless`."""

    def identity(self) -> Keyless:
        raise NotImplementedError  # the block's

    def get_client(self, service: str = "s3", **client_kwargs: Any) -> Any:
        """A boto3 client for the AWS ``service`` (``"s3"``, ``"sts"``, ...) on this task's
        refreshed credentials; ``client_kwargs`` go to ``boto3.Session.client``. Other clouds:
        :meth:`get_google_credentials`, :meth:`get_azure_credential`, :meth:`get_token`."""
        session: Any = self.get_boto3_session()  # any service name, not the stubs' literals
        return session.client(service, **client_kwargs)

    def get_boto3_session(self) -> boto3.Session:
        """A ``boto3.Session`` whose credentials refresh themselves (``target.aws``)."""
        return self.identity().boto3_session()

    def get_s3_client(self, **client_kwargs: Any) -> Any:
        """An S3 client on this task's refreshed credentials (``get_client("s3", ...)``)."""
        return self.get_client("s3", **client_kwargs)

    def get_google_credentials(self) -> Any:
        """``google.auth`` credentials for ``target.gcp`` (one refresh lock per process)."""
        return self.identity().google_credentials()

    def get_azure_credential(self, **credential_kwargs: Any) -> Any:
        """An azure-core ``TokenCredential`` for ``target.azure``; ``credential_kwargs`` go to
        azure-identity on first use (e.g. ``connection_verify``)."""
        return self.identity().azure_credential(**credential_kwargs)

    def get_token(self, audience: str | None = None) -> str:
        """A fresh raw OIDC token (JWT) for ``audience`` (default: the first target's). Hand it
        only to the party it is meant for; never log it."""
        return self.identity().token(audience)

    @contextmanager
    def worker_env(self, token_dir: str | None = None, *, inherit: bool = True,
                   credential_endpoint: bool = False) -> Iterator[dict[str, str]]:
        """The environment for a subprocess started in the ``with`` body (``torchrun``, the
        AWS CLI ...): this process's (``inherit=True``) less the variables that would win over
        keyless (static keys, other secrets), plus token files kept fresh and the SDK
        variables (paths and ids only, never a secret)::

            with creds.worker_env() as env:
                subprocess.run(["torchrun", "--nproc-per-node", "2", "train.py"], env=env)

        A config whose AWS session name, policy or tags differ per rank gets a loopback
        credential endpoint serving each process of the subprocess's tree its own identity
        (every torchrun rank its own session); ``credential_endpoint=True`` asks for it for
        any config.
        """
        from keyless.delivery.child import child_environment

        with child_environment(self.identity(), token_dir=token_dir, inherit=inherit,
                               credential_endpoint=credential_endpoint) as child:
            yield child.env
