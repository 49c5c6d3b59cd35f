"""The node side: one token-file refresher per config per node, in the runtime-env agent.

Everything here is blocking and thread-safe; :class:`~keyless_ray.plugin.KeylessPlugin` calls it
from an executor so the agent's event loop never waits on an IdP.

- :mod:`keyless_ray.intake` validates a ``runtime_env["keyless"]`` value (no inline secret),
  names a config (:func:`~keyless_ray.intake.config_id`) and writes what a worker needs
  (:func:`~keyless_ray.intake.worker_manifest`); its names are re-exported here.
- :class:`NodeRegistry`: ``ensure(config)`` starts (or reuses) the config's
  :class:`~keyless.delivery.TokenFileKeeper` and writes the worker manifest; transient source
  errors are retried with the config's backoff before giving up; ``release(id)`` stops the
  keeper and removes its files. Nothing is cached on failure (Ray caches a failed env itself,
  ten minutes by default, then asks again).
- Stopping does not wait for Ray's reference counting alone (:mod:`keyless_ray.lifecycle`): a
  watcher thread releases a config once no live process uses it (:class:`IdlePolicy`), the
  agent's exit releases all, and each token directory has a :class:`DirectoryWatchdog` that
  removes it if the agent is killed. Each start of a config is a new *generation*, named in
  its URI (:meth:`NodeRegistry.uri`): Ray then asks again to create a config the watcher
  stopped, and a late ``delete_uri`` of an old generation stops nothing.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from keyless import Keyless, KeylessConfig

from .intake import (
    SECRET_FIELDS,
    config_id,
    is_transient,
    parse_runtime_env_value,
    worker_manifest,
)
from .lifecycle import IdlePolicy, users_by_config
from .names import URI_SCHEME
from .node_entry import NodeEntry, agent_identity, start_entry

__all__ = ["SECRET_FIELDS", "NodeEntry", "NodeRegistry", "config_id", "is_transient",
           "parse_runtime_env_value", "worker_manifest"]

logger = logging.getLogger("keyless_ray.agent")

class NodeRegistry:
    """The per-node (per-agent-process) table of running refreshers, keyed by config id.

    ``identity_factory`` builds the agent's :class:`~keyless.Keyless` for a config (tests
    inject a clock or HTTP transport there); ``sleep`` waits between attempts; ``attempts``
    bounds the tries of one :meth:`ensure` on transient errors.
    """

    def __init__(self, *, identity_factory: Callable[[KeylessConfig], Keyless] | None = None,
                 sleep: Callable[[float], None] = time.sleep, attempts: int = 4,
                 idle: IdlePolicy | None = None, watch: bool = False) -> None:
        self._factory = identity_factory or agent_identity
        self._sleep = sleep
        self._attempts = max(attempts, 1)
        self._lock = threading.Lock()
        self._entries: dict[str, NodeEntry] = {}
        self._key_locks: dict[str, threading.Lock] = {}
        self._generations: Counter[str] = Counter()
        self.idle = idle or IdlePolicy.from_environment()
        self._watch = watch  # the agent's registry: a watcher thread and cleanup at exit
        self._watcher: threading.Thread | None = None
        self.starts = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, ident: str) -> NodeEntry | None:
        with self._lock:
            return self._entries.get(ident)

    def uri(self, ident: str) -> str:
        """The URI of ``ident``'s current generation (``keyless://<id>.<generation>``)."""
        with self._lock:
            return f"{URI_SCHEME}{ident}.{self._generations[ident]}"

    def prepared(self, ident: str) -> None:
        """Note that a worker is being set up with ``ident`` (it is not idle meanwhile)."""
        with self._lock:
            entry = self._entries.get(ident)
            if entry is not None:
                entry.last_prepared = time.monotonic()

    def sweep(self, users: Counter[str], now: float) -> list[str]:
        """Release every config that ``users`` shows unused for the idle policy's time;
        returns their ids."""
        with self._lock:
            entries = list(self._entries.values())
        idle = []
        for entry in entries:
            if users[entry.ident]:
                entry.last_seen = now
            elif self.idle.idle(now, entry.last_seen, entry.last_prepared):
                idle.append(entry.ident)
        return [ident for ident in idle if self.release(ident, reason="no process uses it")]

    def _watch_loop(self) -> None:
        while True:
            time.sleep(self.idle.poll_seconds)
            try:
                self.sweep(users_by_config(), time.monotonic())
            except Exception:  # the watcher must outlive any one bad sweep
                logger.exception("keyless: idle sweep failed")

    def _start_watching(self) -> None:
        if self._watch and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_loop, daemon=True,
                                             name="keyless-ray-idle-watcher")
            self._watcher.start()
            atexit.register(self.stop_all)

    def ensure(self, config: KeylessConfig) -> NodeEntry:
        """The running entry for ``config``, started if needed (idempotent, one per id).

        Raises the last KeylessError when the source keeps failing: at once for a permanent
        error (misconfigured source, rejected token), after ``attempts`` tries with the
        config's backoff for transient ones.
        """
        ident = config_id(config)
        with self._lock:
            entry = self._entries.get(ident)
            if entry is not None:
                return entry
            key_lock = self._key_locks.setdefault(ident, threading.Lock())
        with key_lock:  # one start per id; a concurrent caller waits and then reuses it
            with self._lock:
                entry = self._entries.get(ident)
            if entry is None:
                entry = start_entry(config, ident, self._factory, self._attempts, self._sleep)
                self.starts += 1
                with self._lock:
                    entry.generation = self._generations[ident]
                    self._entries[ident] = entry
                self._start_watching()
            return entry

    def release(self, ident: str, generation: int | None = None, *,
                reason: str = "last user gone") -> bool:
        """Stop the refresher of ``ident`` (only if it runs ``generation``, when given) and
        remove its files; False if none ran. The next start is a new generation."""
        with self._lock:
            entry = self._entries.get(ident)
            if entry is None or generation not in (None, entry.generation):
                return False
            del self._entries[ident]
            self._generations[ident] += 1
        entry.stop()
        logger.info("keyless: config %s: %s, refresher stopped", ident, reason)
        return True

    def stop_all(self) -> None:
        with self._lock:
            idents = list(self._entries)
        for ident in idents:
            self.release(ident)
