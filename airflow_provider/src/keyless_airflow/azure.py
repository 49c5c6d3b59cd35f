"""The Microsoft Azure provider's ``WasbHook`` (and every operator built on it) on keyless
credentials.

A user keeps their operators and gives the ``wasb`` connection one more extra::

    {"conn_type": "wasb", "host": "https://ACCOUNT.blob.core.windows.net",
     "extra": {"keyless_conn_id": "<a keyless connection with target.azure>"}}

``WasbHook.get_conn`` then builds its ``BlobServiceClient`` for the connection's account URL
with keyless's azure-core ``TokenCredential`` (:meth:`keyless.Keyless.azure_credential`: the
Entra exchange of a fresh subject token, one cache and refresher per scope, keyless's audit
events) of the running task (:func:`~keyless_airflow.registry.keyless_hook_for`: one pipeline
per keyless connection and task, shared by every ``WasbHook`` of the task). The rest of the
extra goes to ``BlobServiceClient`` as the provider passes it (``connection_verify`` ...). A
connection that also gives a key (``connection_string``, ``shared_access_key``, ``sas_token``,
``account_key``, ``tenant_id``, a password, a managed identity) is refused with a
:class:`keyless.ConfigError` naming the field: keyless never mixes with a stored key.

**Mechanism (say it plainly): a wrapper around the public method ``WasbHook.get_conn``.** The
provider offers no credential hook point: with no key it calls
``get_sync_default_azure_credential()`` (``DefaultAzureCredential``), which knows neither the
connection nor the running task, and reads process-wide environment variables (a managed
identity endpoint in the environment would give every task of a worker process the same
identity). :func:`install` replaces ``WasbHook.get_conn`` (once, idempotent) by a function that
handles connections naming a keyless connection and calls the provider's own ``get_conn``,
unchanged, for every other connection. Nothing private of the provider is touched and no token
is ever written to a connection. :func:`install` runs when Airflow loads
:class:`keyless_airflow.plugin.KeylessPlugin` (see there how to enable it). The deferrable
``WasbAsyncHook`` (``get_async_conn``) and the Data Lake hooks are not covered yet.
"""

from __future__ import annotations

import functools
from typing import Any

from airflow.providers.microsoft.azure.hooks.wasb import WasbHook
from airflow.providers.microsoft.azure.utils import parse_blob_account_url

from keyless import ConfigError

from .fields import CONN_TYPE
from .registry import KEYLESS_CONN_ID_FIELD, keyless_conn_id_in, keyless_hook_for

__all__ = ["KEY_FIELDS", "install", "keyless_blob_service_client"]

#: ``wasb`` extras that give WasbHook another identity; refused beside ``keyless_conn_id``.
KEY_FIELDS = ("connection_string", "shared_access_key", "sas_token", "account_key", "tenant_id",
              "client_secret_auth_config", "managed_identity_client_id",
              "workload_identity_tenant_id")
_PREFIX = "extra__wasb__"
_INSTALLED = "_keyless_installed"


def _client_kwargs(conn_id: str, keyless_conn_id: str, conn: Any) -> dict[str, Any]:
    """The connection's extra minus ``keyless_conn_id``: what the provider would pass on to
    ``BlobServiceClient``; a key beside it is refused."""
    where = f"airflow wasb connection {conn_id!r}"
    extra = dict(conn.extra_dejson or {})
    for name in (KEYLESS_CONN_ID_FIELD, _PREFIX + KEYLESS_CONN_ID_FIELD):
        extra.pop(name, None)
    keys = [name for name in KEY_FIELDS if extra.get(name) or extra.get(_PREFIX + name)]
    if conn.password:
        keys.insert(0, "password")
    if keys:
        raise ConfigError(f"{where}: gives {keys[0]!r} and also names keyless connection "
                          f"{keyless_conn_id!r}; fix: remove {keys[0]!r} (keyless supplies the "
                          "identity) or remove keyless_conn_id", field=keys[0])
    return extra


def keyless_blob_service_client(hook: WasbHook) -> Any | None:
    """A ``BlobServiceClient`` on keyless credentials if ``hook``'s connection names a keyless
    connection, else None (the provider's own ``get_conn`` applies)."""
    from azure.storage.blob import BlobServiceClient

    if hook.public_read:
        return None
    conn = hook.get_connection(hook.conn_id)
    keyless_conn_id = keyless_conn_id_in(hook.conn_id, conn.conn_type, conn.extra_dejson or {},
                                         prefix=_PREFIX)
    if keyless_conn_id is None:
        return None
    if conn.conn_type == CONN_TYPE:
        raise ConfigError(f"airflow: wasb_conn_id {hook.conn_id!r} is a keyless connection, "
                          "which has no storage account URL; fix: make a wasb connection with "
                          f"the account URL as host and extra {{\"keyless_conn_id\": "
                          f"\"{hook.conn_id}\"}}, and name that one", field="wasb_conn_id")
    if not conn.host and not conn.login:
        raise ConfigError(f"airflow wasb connection {hook.conn_id!r}: no account URL; fix: set "
                          "host to https://ACCOUNT.blob.core.windows.net (or login to the "
                          "account name)", field="host")
    kwargs = _client_kwargs(hook.conn_id, keyless_conn_id, conn)
    credential = keyless_hook_for(keyless_conn_id).get_azure_credential()
    hook.log.info("keyless: wasb connection %r uses keyless connection %r", hook.conn_id,
                  keyless_conn_id)
    return BlobServiceClient(account_url=parse_blob_account_url(conn.host, conn.login),
                             credential=credential, **kwargs)


def install() -> None:
    """Make ``WasbHook.get_conn`` serve connections that name a keyless connection (see the
    module docstring); idempotent."""
    original = WasbHook.get_conn
    if getattr(original, _INSTALLED, False):
        return

    @functools.wraps(original)
    def get_conn(self: WasbHook) -> Any:
        client = keyless_blob_service_client(self)
        return client if client is not None else original(self)

    setattr(get_conn, _INSTALLED, True)
    WasbHook.get_conn = get_conn  # type: ignore[method-assign]
