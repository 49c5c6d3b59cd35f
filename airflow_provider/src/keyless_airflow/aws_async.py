"""Deferrable AWS operators on keyless: the aiobotocore session ``create_session(deferrable=True)``
returns.

A deferrable operator or sensor (``S3KeySensor(deferrable=True)`` ...) hands its wait to a
trigger, which runs on an event loop in the triggerer process and asks ``[aws] session_factory``
for an aiobotocore session (``AwsGenericHook.get_async_conn`` calls ``create_session`` in a
worker thread). For a keyless connection, :func:`deferrable_session` answers with an
``AioSession`` whose first credential provider is keyless and always answers:

- credentials: :class:`KeylessAioCredentials`, aiobotocore's own deferred refreshable
  credentials refreshed from the keyless pipeline's botocore credentials in a thread
  (``asyncio.to_thread``), so the IdP and STS calls never block the event loop; aiobotocore's
  refresh lock makes concurrent requests share one refresh; the refresh windows are the
  pipeline's (scaled to the real session length), so the loop takes new credentials when
  keyless has them. Nothing is fetched before the first request.
- identity: the task the trigger waits for. Inside a task, the running task
  (:func:`~keyless_airflow.task_context.task_identity`); in the triggerer,
  :func:`trigger_task_identity`. The pipeline is the one :func:`~keyless_airflow.aws.
  keyless_hook_for` keeps for that task, so the STS session name names its dag and task.
  ``dag.test()`` runs a trigger inline, without its task instance or any task context: there
  the task cannot be known, and each deferrable session gets an identity of its own whose task
  field is ``trigger-<8 hex>`` (a warning says so); it is never another task's.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from aiobotocore.credentials import (  # type: ignore[import-untyped]
    AioDeferredRefreshableCredentials,
)

from keyless import WorkerContext

from .registry import keyless_hook_for
from .task_context import task_identity

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.base_aws import BaseSessionFactory

    from .hooks import KeylessHook

__all__ = ["CredentialSnapshot", "KeylessAioCredentials", "credential_snapshot",
           "deferrable_session", "trigger_task_identity"]

logger = logging.getLogger("keyless.airflow")

#: The credential ``method`` aiobotocore reports (the synchronous side's is the same).
METHOD = "keyless-web-identity"


class CredentialSnapshot(NamedTuple):
    """One consistent credential set with its expiry (epoch seconds) and the refresh windows
    (seconds before expiry: advisory, mandatory) of the botocore credentials it came from."""

    access_key: str
    secret_key: str
    token: str | None
    expires_at: float
    advisory_seconds: float
    mandatory_seconds: float

    def __repr__(self) -> str:  # never the secret or the token
        return f"CredentialSnapshot(access_key={self.access_key!r}, expires_at={self.expires_at})"


def credential_snapshot(credentials: Any) -> CredentialSnapshot:
    """Read keyless's botocore credentials (refreshed if due; blocking): the frozen set and
    its expiry as one pair (``frozen_with_expiry``), plus botocore's two refresh windows."""
    frozen, expires_at = credentials.frozen_with_expiry()
    return CredentialSnapshot(
        str(frozen.access_key), str(frozen.secret_key), frozen.token, float(expires_at),
        float(credentials._advisory_refresh_timeout),
        float(credentials._mandatory_refresh_timeout))


class KeylessAioCredentials(AioDeferredRefreshableCredentials):  # type: ignore[misc]
    """aiobotocore credentials fed by ``snapshot`` (blocking), called off the event loop.

    ``time_fetcher`` (tests) replaces aiobotocore's clock (a timezone-aware ``datetime``).
    """

    def __init__(self, snapshot: Callable[[], CredentialSnapshot], *,
                 time_fetcher: Callable[[], datetime.datetime] | None = None) -> None:
        clock = {} if time_fetcher is None else {"time_fetcher": time_fetcher}
        super().__init__(refresh_using=self._fetch, method=METHOD, **clock)
        self._snapshot = snapshot

    def __repr__(self) -> str:
        return f"KeylessAioCredentials(method={METHOD!r})"

    async def _fetch(self) -> dict[str, Any]:
        """aiobotocore's ``refresh_using`` (awaited under its refresh lock)."""
        snap = await asyncio.to_thread(self._snapshot)
        self._advisory_refresh_timeout = snap.advisory_seconds
        self._mandatory_refresh_timeout = snap.mandatory_seconds
        expiry = datetime.datetime.fromtimestamp(snap.expires_at, tz=datetime.UTC)
        return {"access_key": snap.access_key, "secret_key": snap.secret_key,
                "token": snap.token, "expiry_time": expiry.isoformat()}


def trigger_task_identity() -> dict[str, Any] | None:
    """The task the running trigger belongs to (the keys of ``task_identity()``), or None.

    The triggerer binds each trigger's task instance (``trigger_id``, ``dag_id``, ``task_id``,
    ``run_id``, ``map_index``, ``try_number``) into structlog's context variables when it starts
    the trigger (``TriggerRunner.run_trigger``, Airflow 3.3), for the trigger's log; the
    trigger's asyncio task and the threads ``sync_to_async`` runs for it inherit them.
    """
    import structlog

    bound = structlog.contextvars.get_contextvars()
    if bound.get("trigger_id") is None or not bound.get("dag_id") or not bound.get("task_id"):
        return None
    map_index, try_number = bound.get("map_index"), bound.get("try_number")
    return {"dag_id": str(bound["dag_id"]), "task_id": str(bound["task_id"]),
            "run_id": str(bound.get("run_id") or ""),
            "map_index": -1 if map_index is None else int(map_index),
            "try_number": int(try_number or 0)}


def _hook_for_session(conn_id: str) -> KeylessHook:
    """The keyless hook a deferrable session of ``conn_id`` uses (see the module doc)."""
    from .hooks import KeylessHook

    if task_identity() is not None:
        return keyless_hook_for(conn_id)
    task = trigger_task_identity()
    if task is not None:
        logger.info("keyless: trigger session for dag %s task %s (try %s, map index %s)",
                    task["dag_id"], task["task_id"], task["try_number"], task["map_index"])
        return keyless_hook_for(conn_id, task)
    own = f"trigger-{secrets.token_hex(4)}"
    logger.warning("keyless: this trigger's task is unknown (dag.test() runs triggers inline, "
                   "without their task instance); its session gets an identity of its own, "
                   "task %r", own)
    return KeylessHook(conn_id, context=WorkerContext.from_environment().with_values(
        task_id=own))


def deferrable_session(factory: BaseSessionFactory, conn_id: str) -> Any:
    """An ``AioSession`` on the keyless connection ``conn_id`` for ``factory``'s AWS connection
    (its region, else the keyless target's)."""
    from botocore.credentials import CredentialProvider

    hook = _hook_for_session(conn_id)  # the credentials hold it: it lives as long as they do
    credentials = KeylessAioCredentials(
        lambda: credential_snapshot(hook.identity.aws().credentials()))

    class KeylessAioProvider(CredentialProvider):  # aiobotocore awaits load()
        METHOD = METHOD
        CANONICAL_NAME = "custom-keyless"

        async def load(self) -> KeylessAioCredentials:
            return credentials

    session: Any = factory.get_async_session()  # type: ignore[no-untyped-call]
    resolver = session.get_component("credential_provider")
    resolver.insert_before(resolver.providers[0].METHOD, KeylessAioProvider())
    session.set_config_variable("region", factory.region_name or hook.identity.aws().region)
    return session
