"""The Google provider's hooks (``GCSHook``, ``BigQueryHook``, every ``GoogleBaseHook``) and
the operators built on them, on keyless credentials.

A user keeps their operators and either gives the ``google_cloud_platform`` connection one
more extra, ``{"keyless_conn_id": "<a keyless connection with target.gcp>"}`` (its other
extras, e.g. ``project``, work as usual), or names a ``keyless`` connection as ``gcp_conn_id``
directly. The hook's credentials are then the running task's
:meth:`keyless.Keyless.google_credentials` (:func:`~keyless_airflow.registry.keyless_hook_for`:
one pipeline per keyless connection and task, shared by every hook of the task): the STS
exchange of a fresh subject token, ``target.gcp`` impersonation and access boundary (whose
templates are filled from the task: ``{task_id}``, ``{job_id}`` = dag id ...), refreshed ahead
of expiry, keyless's audit events naming the task. The project is the extra ``project``, else
``target.gcp.project_id``, else the impersonated service account's project.

A connection that also gives a key (``key_path``, ``keyfile_dict``, ``credential_config_file``,
``key_secret_name``, ``idp_issuer_url``, ``is_anonymous``) or an ``impersonation_chain`` (the
operator's argument or the extra) is refused with a :class:`keyless.ConfigError` naming it:
keyless never mixes with a stored key, and impersonation is ``target.gcp.service_account``.

**Mechanism (say it plainly): a wrapper around the public method
``GoogleBaseHook.get_credentials_and_project_id``**, through which every Google hook gets its
credentials. The provider offers no credential hook point: its fallback is
``google.auth.default()``, which knows neither the connection nor the task and reads
process-wide settings (a metadata server in the environment would give every task of a worker
process one identity). :func:`install` replaces the method (once, idempotent) by a function
that handles connections naming a keyless connection and calls the provider's own method,
unchanged, for every other. Nothing private is patched; no token is written to a connection.
It runs when Airflow loads :class:`keyless_airflow.plugin.KeylessPlugin`. Hooks that hand a
key file to a subprocess (``provide_gcp_credential_file``: gcloud, Dataflow launchers) and the
deferrable ``GoogleBaseAsyncHook`` are not covered: use ``KeylessHook.worker_env()`` there.
"""

from __future__ import annotations

import functools
from typing import Any

from airflow.providers.google.common.hooks.base_google import GoogleBaseHook, get_field

from keyless import ConfigError

from .fields import CONN_TYPE
from .fields import PREFIX as KEYLESS_PREFIX
from .registry import keyless_conn_id_in, keyless_hook_for

__all__ = ["KEY_FIELDS", "install", "keyless_credentials_and_project_id"]

#: ``google_cloud_platform`` extras that give the hook another identity (refused beside keyless).
KEY_FIELDS = ("key_path", "keyfile_dict", "credential_config_file", "key_secret_name",
              "idp_issuer_url", "is_anonymous", "impersonation_chain")
_PREFIX = "extra__google_cloud_platform__"
_INSTALLED = "_keyless_installed"
#: Extras only a keyless connection has (its form's fields): worth looking its type up.
_KEYLESS_SHAPED = ("target", "source", "source_type", f"{KEYLESS_PREFIX}target",
                   f"{KEYLESS_PREFIX}source_type")


def _named_keyless_conn(hook: GoogleBaseHook) -> str | None:
    extras: dict[str, Any] = hook.extras or {}
    conn_type = None
    if any(name in extras for name in _KEYLESS_SHAPED):  # gcp_conn_id may be a keyless one
        conn_type = hook.get_connection(hook.gcp_conn_id).conn_type
    if conn_type == CONN_TYPE:
        return hook.gcp_conn_id
    return keyless_conn_id_in(hook.gcp_conn_id, conn_type, extras, prefix=_PREFIX)


def _project_of(service_account: str | None) -> str | None:
    """``PROJECT`` of ``NAME@PROJECT.iam.gserviceaccount.com``."""
    if service_account and service_account.endswith(".iam.gserviceaccount.com"):
        return service_account.split("@", 1)[1].split(".", 1)[0]
    return None


def keyless_credentials_and_project_id(hook: GoogleBaseHook) -> tuple[Any, str | None] | None:
    """``(credentials, project_id)`` from keyless if ``hook``'s connection names a keyless
    connection, else None (the provider's own method applies)."""
    keyless_conn_id = _named_keyless_conn(hook)
    if keyless_conn_id is None:
        return None
    where = f"airflow google connection {hook.gcp_conn_id!r}"
    own = hook.gcp_conn_id == keyless_conn_id
    keys = [] if own else [name for name in KEY_FIELDS if get_field(hook.extras, name)]
    if hook.impersonation_chain:
        keys.insert(0, "impersonation_chain")
    if keys:
        raise ConfigError(f"{where}: gives {keys[0]!r} and also takes keyless connection "
                          f"{keyless_conn_id!r}; fix: remove {keys[0]!r} (keyless supplies the "
                          "identity; impersonate with target.gcp.service_account)",
                          field=keys[0])
    keyless = keyless_hook_for(keyless_conn_id)
    target = keyless.config.target.gcp
    if target is None:
        raise ConfigError(f"{where}: keyless connection {keyless_conn_id!r} has no target.gcp; "
                          "fix: add target.gcp (audience, service_account ...) to it",
                          field="target.gcp")
    hook.log.info("keyless: google connection %r uses keyless connection %r",
                  hook.gcp_conn_id, keyless_conn_id)
    project = (None if own else get_field(hook.extras, "project")) or target.project_id or \
        _project_of(target.service_account)
    return keyless.get_google_credentials(), project


def install() -> None:
    """Make ``GoogleBaseHook.get_credentials_and_project_id`` serve connections that name a
    keyless connection (see the module docstring); idempotent."""
    original = GoogleBaseHook.get_credentials_and_project_id
    if getattr(original, _INSTALLED, False):
        return

    @functools.wraps(original)
    def get_credentials_and_project_id(self: GoogleBaseHook) -> tuple[Any, str | None]:
        found = keyless_credentials_and_project_id(self)
        return found if found is not None else original(self)

    setattr(get_credentials_and_project_id, _INSTALLED, True)
    GoogleBaseHook.get_credentials_and_project_id = (  # type: ignore[method-assign]
        get_credentials_and_project_id)
