"""The one :class:`~keyless_airflow.hooks.KeylessHook` per (keyless connection, running task) in
this process, shared by every provider adapter (Google, Azure), and how a provider's connection
names a keyless one.

Providers make a new hook, hence a new client, for almost every call (``GCSHook.upload`` then
``download``; ``WasbHook.load_string`` then ``read_file``). The keyless hook behind them is kept
once per (keyless connection, running task): every client of a task shares one pipeline (one
IdP token, one exchange per cloud, refreshed together), each task has its own (its
:class:`keyless.WorkerContext` fills the config's templates and names the audit events), and
a forked child starts with none (:class:`keyless.host.ProcessCache`). In the triggerer, a
trigger's hook works as the task the trigger waits for and is kept only while something uses
it (a triggerer runs for long; its triggers come and go).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from keyless.host import ProcessCache

from .fields import CONN_TYPE
from .task_context import task_identity, worker_context_for

if TYPE_CHECKING:
    from .hooks import KeylessHook

__all__ = ["KEYLESS_CONN_ID_FIELD", "keyless_conn_id_in", "keyless_hook_for"]

#: The extra of a provider's connection (``google_cloud_platform``, ``wasb`` ...) naming the
#: keyless connection to take credentials from.
KEYLESS_CONN_ID_FIELD = "keyless_conn_id"

_HookKey = tuple[str, tuple[tuple[str, Any], ...] | None]
_hooks: ProcessCache[_HookKey, KeylessHook] = ProcessCache(size=256)
_trigger_hooks: weakref.WeakValueDictionary[_HookKey, KeylessHook] = weakref.WeakValueDictionary()
_trigger_lock = threading.Lock()
_trigger_pid = os.getpid()


def keyless_hook_for(conn_id: str, task: Mapping[str, Any] | None = None) -> KeylessHook:
    """The one ``KeylessHook`` of keyless connection ``conn_id`` for the running task in this
    process (built on first use). ``task`` (the keys of
    :func:`~keyless_airflow.task_context.task_identity`) names another task instead: the one a
    trigger waits for, in the triggerer; that hook is held only while it is used. Raises
    :class:`keyless.ConfigError` for an invalid connection (naming the field at fault)."""
    from .hooks import KeylessHook

    global _trigger_pid
    if task is None:
        running = task_identity()
        key: _HookKey = (conn_id, None if running is None else tuple(sorted(running.items())))
        hook, _ = _hooks.get(key, lambda: KeylessHook(conn_id))
        return hook
    key = (conn_id, tuple(sorted(task.items())))
    with _trigger_lock:
        if _trigger_pid != os.getpid():  # never share a parent's refreshers across a fork
            _trigger_hooks.clear()
            _trigger_pid = os.getpid()
        trigger_hook = _trigger_hooks.get(key)
        if trigger_hook is None:
            trigger_hook = KeylessHook(conn_id, context=worker_context_for(task))
            _trigger_hooks[key] = trigger_hook
        return trigger_hook


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
