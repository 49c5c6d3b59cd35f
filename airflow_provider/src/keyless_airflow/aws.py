"""The Amazon provider's hooks (``S3Hook`` and every ``AwsBaseHook``) on keyless credentials.

Airflow's Amazon provider builds every boto3 session through the class named by
``[aws] session_factory`` (a ``BaseSessionFactory`` subclass, resolved once when
``airflow.providers.amazon.aws.hooks.base_aws`` is imported). Set, on every worker::

    [aws]
    session_factory = keyless_airflow.aws.KeylessSessionFactory

    # or: AIRFLOW__AWS__SESSION_FACTORY=keyless_airflow.aws.KeylessSessionFactory

Then an ``aws`` connection whose extra has ``"keyless_conn_id": "<a keyless connection>"`` (the
rest of the extra, e.g. ``endpoint_url``, ``config_kwargs``, ``region_name``, works as usual),
or ``aws_conn_id`` naming a ``keyless`` connection directly, gets a session on that keyless
connection's refreshed, per-task credentials. Any other connection is handled exactly as the
Amazon provider does. Deferrable (aiobotocore) sessions are not supported on keyless yet.

The Amazon provider makes a new session factory, hence a new session, for almost every call
(``S3Hook.load_string`` then ``read_key``: two). The keyless hook behind them is kept once per
(keyless connection, running task) in this process (:func:`keyless_hook_for`), so every
session of a task shares one pipeline: one IdP token and one STS session, refreshed together.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.base_aws import BaseSessionFactory

from keyless import ConfigError

from .fields import CONN_TYPE
from .task_context import task_identity

if TYPE_CHECKING:
    from .hooks import KeylessHook

__all__ = ["KEYLESS_CONN_ID_FIELD", "KeylessSessionFactory", "keyless_hook_for"]

#: The ``aws`` connection extra naming the keyless connection to take credentials from.
KEYLESS_CONN_ID_FIELD = "keyless_conn_id"


_HookKey = tuple[str, tuple[tuple[str, Any], ...] | None]
_hooks: dict[_HookKey, KeylessHook] = {}
_hooks_pid = os.getpid()
_hooks_lock = threading.Lock()


def keyless_hook_for(conn_id: str) -> KeylessHook:
    """The one :class:`~keyless_airflow.hooks.KeylessHook` of ``conn_id`` for the running task
    in this process (built on first use; a forked child starts with none). This registry is
    the owner of the hooks the session factory hands out; each hook owns its pipeline."""
    from .hooks import KeylessHook

    global _hooks_pid
    task = task_identity()
    key: _HookKey = (conn_id, None if task is None else tuple(sorted(task.items())))
    with _hooks_lock:
        if _hooks_pid != os.getpid():  # never share a parent's refreshers across a fork
            _hooks.clear()
            _hooks_pid = os.getpid()
        hook = _hooks.get(key)
        if hook is None:
            hook = _hooks[key] = KeylessHook(conn_id)
        return hook


class KeylessSessionFactory(BaseSessionFactory):
    """``BaseSessionFactory`` that recognises keyless connections (see the module doc)."""

    @property
    def keyless_conn_id(self) -> str | None:
        """The keyless connection behind this AWS connection, or None."""
        conn: Any = self.conn
        if not conn:
            return None
        named = conn.extra_config.get(KEYLESS_CONN_ID_FIELD)
        if named:
            return str(named)
        if conn.conn_type == CONN_TYPE and isinstance(conn.conn_id, str):
            return conn.conn_id
        return None

    def create_session(self, deferrable: bool = False) -> Any:
        conn_id = self.keyless_conn_id
        if conn_id is None:
            return super().create_session(deferrable=deferrable)
        if deferrable:
            raise ConfigError(
                f"airflow aws: connection {self.conn.conn_id!r} takes keyless credentials from "
                f"{conn_id!r}, which has no deferrable (aiobotocore) session yet; fix: run the "
                "operator with deferrable=False", field=KEYLESS_CONN_ID_FIELD)
        self.log.info("keyless: AWS connection %r uses keyless connection %r",
                      self.conn.conn_id, conn_id)
        return keyless_hook_for(conn_id).get_session(region_name=self.region_name)
