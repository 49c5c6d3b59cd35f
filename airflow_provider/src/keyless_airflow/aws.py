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
"""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import BaseSessionFactory

from keyless import ConfigError

from .fields import CONN_TYPE

__all__ = ["KEYLESS_CONN_ID_FIELD", "KeylessSessionFactory"]

#: The ``aws`` connection extra naming the keyless connection to take credentials from.
KEYLESS_CONN_ID_FIELD = "keyless_conn_id"


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
        from .hooks import KeylessHook

        self.log.info("keyless: AWS connection %r uses keyless connection %r",
                      self.conn.conn_id, conn_id)
        return KeylessHook(conn_id).get_session(region_name=self.region_name)
