"""``KeylessHook``: the ``keyless`` connection type's hook (Airflow 3.3 Task SDK).

The connection's extra holds one keyless config (see :mod:`keyless_airflow.fields`); the hook
validates it when constructed (an invalid connection is refused naming the field at fault) and
builds one :class:`keyless.Keyless` pipeline on first use, named after the running task
(:mod:`keyless_airflow.task_context`), so the default AWS session name names the dag and task.
Nothing secret is stored by the hook beyond the validated config (whose secrets are
``SecretStr``), and its repr names only the connection id, source type and targets.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseHook

from keyless import Keyless, KeylessConfig, KeylessError, WorkerContext
from keyless.delivery.child import child_environment

from .extra import config_from_extra
from .fields import CONN_TYPE
from .provider_info import HOOK_NAME
from .task_context import task_identity, task_worker_context

if TYPE_CHECKING:
    import boto3

__all__ = ["KeylessHook"]


def _mask(value: str) -> None:
    """Register a value with Airflow's log masker (task logs show *** instead)."""
    from airflow.sdk.log import mask_secret

    mask_secret(value)


class KeylessHook(BaseHook):
    """Short-lived, refreshed cloud identity for the running task, from a ``keyless``
    connection.

    ``keyless_conn_id`` names the connection; ``context`` overrides the worker context (default:
    the running task's). Raises :class:`keyless.ConfigError` if the connection's config is
    invalid.
    """

    conn_name_attr: ClassVar[str] = "keyless_conn_id"
    default_conn_name: ClassVar[str] = "keyless_default"
    conn_type: ClassVar[str] = CONN_TYPE
    hook_name: ClassVar[str] = HOOK_NAME

    def __init__(self, keyless_conn_id: str = default_conn_name, *,
                 context: WorkerContext | None = None, logger_name: str | None = None) -> None:
        super().__init__(logger_name=logger_name)
        self.keyless_conn_id = keyless_conn_id
        connection = self.get_connection(keyless_conn_id)
        self.config: KeylessConfig = config_from_extra(
            connection.extra_dejson, where=f"airflow connection {keyless_conn_id!r}")
        self._context = context
        self._identity: Keyless | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        target = self.config.target
        targets = [name for name in type(target).model_fields if getattr(target, name) is not None]
        return (f"KeylessHook(conn_id={self.keyless_conn_id!r}, "
                f"source={self.config.source.type!r}, targets={targets!r})")

    # ------------------------------------------------------------------ the pipeline
    def worker_context(self) -> WorkerContext:
        """The context per-worker templates are filled from (the running task's)."""
        return self._context if self._context is not None else task_worker_context()

    @property
    def identity(self) -> Keyless:
        """This hook's one keyless pipeline (built on first use, in the running task)."""
        with self._lock:
            if self._identity is None:
                self._identity = Keyless(self.config, context=self.worker_context())
                task = task_identity()
                if task is not None:
                    self.log.info("keyless: identity for dag %s task %s (try %s, map index %s)",
                                  task["dag_id"], task["task_id"], task["try_number"],
                                  task["map_index"])
            return self._identity

    def get_conn(self) -> Keyless:
        """The :class:`keyless.Keyless` pipeline (Airflow's generic hook entry point)."""
        return self.identity

    # ------------------------------------------------------------------ AWS
    def get_session(self, region_name: str | None = None) -> boto3.Session:
        """A ``boto3.Session`` whose credentials refresh themselves (``target.aws``)."""
        import boto3

        exchange = self.identity.aws()
        return boto3.Session(botocore_session=exchange.botocore_session(),
                             region_name=region_name or exchange.region)

    def get_client_type(self, client_type: str, region_name: str | None = None,
                        **client_kwargs: Any) -> Any:
        """A boto3 client (``client_type`` e.g. ``"s3"``) on keyless credentials;
        ``client_kwargs`` go to ``Session.client`` (``endpoint_url``, ``config`` ...)."""
        session: Any = self.get_session(region_name)
        return session.client(client_type, **client_kwargs)

    # ------------------------------------------------------------------ other clouds
    def get_google_credentials(self) -> Any:
        """``google.auth`` credentials for ``target.gcp`` (refreshed ahead of expiry)."""
        return self.identity.google_credentials()

    def get_azure_credential(self, **credential_kwargs: Any) -> Any:
        """An azure-core ``TokenCredential`` for ``target.azure``."""
        return self.identity.azure_credential(**credential_kwargs)

    def get_token(self, audience: str | None = None) -> str:
        """The raw subject JWT for ``audience`` (masked in task logs). Hand it only to the
        party it is meant for."""
        token = self.identity.token(audience)
        _mask(token)
        return token

    # ------------------------------------------------------------------ subprocesses
    @contextlib.contextmanager
    def worker_env(self, token_dir: str | None = None, *, inherit: bool = True,
                   credential_endpoint: bool = False) -> Iterator[dict[str, str]]:
        """The environment for a subprocess (``torchrun``, s3fs, the AWS CLI ...) started in
        the ``with`` body: this process's (``inherit=True``) less the variables that would
        shadow keyless (static keys, other secrets), plus keyless's (paths, ARNs, ids and
        session names only: never a secret), kept fresh until the body ends.

        A config whose AWS session name, policy or tags differ per rank (``{rank}``,
        ``{local_rank}``, ``{node}``, a session policy) gets a loopback credential endpoint
        that serves each process of the subprocess's tree its own identity: every rank that
        ``torchrun`` starts has its own session, named after this task and the rank.
        ``credential_endpoint=True`` asks for the endpoint for any config.
        """
        with child_environment(self.identity, token_dir=token_dir, inherit=inherit,
                               credential_endpoint=credential_endpoint) as child:
            yield child.env

    # ------------------------------------------------------------------ checks
    def test_connection(self) -> tuple[bool, str]:
        """Fetch a token, check its claims (discovery, signature, iss, aud, times) and dry-run
        the exchange. Returns ``(ok, message)``; a failure names the check or claim at fault
        and its fix. The token itself is never in the message."""
        from keyless.verify.doctor import diagnose

        try:
            identity = self.identity
        except KeylessError as exc:
            return False, f"keyless: {exc.message}"
        token: str | None = None
        problem: str | None = None
        try:
            token = identity.token()
        except KeylessError as exc:
            problem = exc.message
        checks = diagnose(token, token_origin=f"source {self.config.source.type}",
                          token_problem=problem, identity=identity,
                          allow_insecure_http=self.config.allow_insecure_http)
        failed = [c for c in checks if c.status == "FAIL"]
        if failed:
            return False, "keyless: " + "; ".join(f"{c.name}: {c.detail}" for c in failed)
        passed = [c.name for c in checks if c.status == "ok"]
        warned = [f"{c.name}: {c.detail}" for c in checks if c.status == "warn"]
        message = "keyless: ok (" + ", ".join(passed) + ")"
        if warned:
            message += "; warnings: " + "; ".join(warned)
        return True, message
