"""The one :class:`~keyless_airflow.hooks.KeylessHook` per (keyless connection, running task) in
this process, shared by every provider adapter (Google, Azure), and how a provider's connection
names a keyless one.

Providers make a new hook, hence a new client, for almost every call (``GCSHook.upload`` then
``download``; ``WasbHook.load_string`` then ``read_file``). The keyless hook behind them is kept
once per (keyless connection, running task): every client of a task shares one pipeline (one
IdP token, one exchange per cloud, refreshed together), each task has its own (its
:class:`keyless.WorkerContext` fills the config's templates and names the audit events), and
a forked child starts with none (:class:`keyless.host.ProcessCache`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from keyless.host import ProcessCache

from .fields import CONN_TYPE
from .task_context import task_identity

if TYPE_CHECKING:
    from .hooks import KeylessHook

__all__ = ["KEYLESS_CONN_ID_FIELD", "keyless_conn_id_in", "keyless_hook_for"]

#: The extra of a provider's connection (``google_cloud_platform``, ``wasb`` ...) naming the
#: keyless connection to take credentials from.
KEYLESS_CONN_ID_FIELD = "keyless_conn_id"

_HookKey = tuple[str, tuple[tuple[str, Any], ...] | None]
_hooks: ProcessCache[_HookKey, KeylessHook] = ProcessCache(size=256)


def keyless_hook_for(conn_id: str) -> KeylessHook:
    """The one ``KeylessHook`` of keyless connection ``conn_id`` for the running task in this
    process (built on first use). Raises :class:`keyless.ConfigError` for an invalid
    connection (naming the field at fault)."""
    from .hooks import KeylessHook

    task = task_identity()
    key: _HookKey = (conn_id, None if task is None else tuple(sorted(task.items())))
    hook, _ = _hooks.get(key, lambda: KeylessHook(conn_id))
    return hook


def keyless_conn_id_in(conn_id: str, conn_type: str | None,
                       extra: Mapping[str, Any], *, prefix: str = "") -> str | None:
    """The keyless connection a provider's connection names: its ``keyless_conn_id`` extra
    (also accepted as ``<prefix>keyless_conn_id``, the providers' legacy form prefix), or the
    connection itself if it is of type ``keyless``; None if it names none."""
    for name in (KEYLESS_CONN_ID_FIELD, prefix + KEYLESS_CONN_ID_FIELD):
        value = extra.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return conn_id if conn_type == CONN_TYPE else None
