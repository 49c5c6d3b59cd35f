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
Amazon provider does. Deferrable operators and sensors get an aiobotocore session on the same
credentials, as the task they wait for (:mod:`keyless_airflow.aws_async`).

The Amazon provider makes a new session factory, hence a new session, for almost every call
(``S3Hook.load_string`` then ``read_key``: two). The keyless hook behind them is kept once per
(keyless connection, running task) in this process (:func:`keyless_hook_for`), so every
session of a task shares one pipeline: one IdP token and one STS session, refreshed together.
In the triggerer the task is the trigger's, and its hook lives as long as a session on it.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import BaseSessionFactory

from .registry import KEYLESS_CONN_ID_FIELD, keyless_conn_id_in, keyless_hook_for

__all__ = ["KEYLESS_CONN_ID_FIELD", "KeylessSessionFactory", "keyless_hook_for"]


class KeylessSessionFactory(BaseSessionFactory):
    """``BaseSessionFactory`` that recognises keyless connections (see the module doc)."""

    @property
    def keyless_conn_id(self) -> str | None:
        """The keyless connection behind this AWS connection, or None."""
        conn: Any = self.conn
        if not conn or not isinstance(conn.conn_id, str):
            return None
        return keyless_conn_id_in(conn.conn_id, conn.conn_type, conn.extra_config)

    def create_session(self, deferrable: bool = False) -> Any:
        conn_id = self.keyless_conn_id
        if conn_id is None:
            return super().create_session(deferrable=deferrable)
        self.log.info("keyless: AWS connection %r uses keyless connection %r%s",
                      self.conn.conn_id, conn_id, " (deferrable)" if deferrable else "")
        if deferrable:
            from .aws_async import deferrable_session

            return deferrable_session(self, conn_id)
        return keyless_hook_for(conn_id).get_session(region_name=self.region_name)
