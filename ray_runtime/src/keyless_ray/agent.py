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
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from keyless import (
    ExchangeFailed,
    Keyless,
    KeylessConfig,
    RefreshPolicy,
    SourceUnavailable,
    WorkerContext,
)
from keyless.delivery import TokenDirectory, TokenFileKeeper, sdk_environment
from keyless.delivery.files import write_private_file

from .intake import (
    MANIFEST_NAME,
    SECRET_FIELDS,
    config_id,
    is_transient,
    parse_runtime_env_value,
    worker_manifest,
)
from .names import MANIFEST_VARIABLE, MARKER_VARIABLE

__all__ = ["SECRET_FIELDS", "NodeEntry", "NodeRegistry", "config_id", "is_transient",
           "parse_runtime_env_value", "worker_manifest"]

logger = logging.getLogger("keyless_ray.agent")

def _agent_identity(config: KeylessConfig) -> Keyless:
    return Keyless(config, context=WorkerContext(host=socket.gethostname()))


@dataclass
class NodeEntry:
    """One config's refresher on this node, its files and the variables for its workers."""

    ident: str
    keeper: TokenFileKeeper
    directory: TokenDirectory
    manifest: Path
    sdk_env: dict[str, str] = field(default_factory=dict)

    def env_vars(self) -> dict[str, str]:
        """Paths, ids and the marker only (Ray logs these in plaintext)."""
        return {**self.sdk_env, MARKER_VARIABLE: self.ident, MANIFEST_VARIABLE: str(self.manifest)}

    def stop(self) -> None:
        self.keeper.stop()
        self.directory.cleanup()


class NodeRegistry:
    """The per-node (per-agent-process) table of running refreshers, keyed by config id.

    ``identity_factory`` builds the agent's :class:`~keyless.Keyless` for a config (tests
    inject a clock or HTTP transport there); ``sleep`` waits between attempts; ``attempts``
    bounds the tries of one :meth:`ensure` on transient errors.
    """

    def __init__(self, *, identity_factory: Callable[[KeylessConfig], Keyless] | None = None,
                 sleep: Callable[[float], None] = time.sleep, attempts: int = 4) -> None:
        self._factory = identity_factory or _agent_identity
        self._sleep = sleep
        self._attempts = max(attempts, 1)
        self._lock = threading.Lock()
        self._entries: dict[str, NodeEntry] = {}
        self._key_locks: dict[str, threading.Lock] = {}
        self.starts = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, ident: str) -> NodeEntry | None:
        with self._lock:
            return self._entries.get(ident)

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
                entry = self._start(config, ident)
                with self._lock:
                    self._entries[ident] = entry
            return entry

    def _start(self, config: KeylessConfig, ident: str) -> NodeEntry:
        policy = RefreshPolicy.from_spec(config.refresh)
        base = config.delivery.token_dir
        directory = TokenDirectory(Path(base) / f"ray-{ident}" if base else None)
        try:
            for attempt in range(1, self._attempts + 1):
                identity = self._factory(config)
                keeper = TokenFileKeeper(identity, directory)
                try:
                    keeper.start()
                    break
                except (SourceUnavailable, ExchangeFailed) as exc:
                    if not is_transient(exc) or attempt == self._attempts:
                        raise
                    logger.warning("keyless: config %s: attempt %d failed (%s), retrying",
                                   ident, attempt, type(exc).__name__)
                    self._sleep(policy.backoff_cap(attempt))
            manifest = write_private_file(
                directory.path / MANIFEST_NAME,
                json.dumps(worker_manifest(identity, ident, keeper.files)))
            entry = NodeEntry(ident=ident, keeper=keeper, directory=directory,
                              manifest=manifest,
                              # shared by every worker of the node: a per-worker session
                              # policy or boundary is left out (helpers apply it per rank)
                              sdk_env=sdk_environment(identity, keeper.files, narrowed="omit"))
        except BaseException:
            directory.cleanup()
            raise
        self.starts += 1
        logger.info("keyless: config %s: token files kept fresh in %s", ident, directory.path)
        return entry

    def release(self, ident: str) -> bool:
        """Stop the refresher of ``ident`` and remove its files; False if none ran."""
        with self._lock:
            entry = self._entries.pop(ident, None)
        if entry is None:
            return False
        entry.stop()
        logger.info("keyless: config %s: last user gone, refresher stopped", ident)
        return True

    def stop_all(self) -> None:
        with self._lock:
            idents = list(self._entries)
        for ident in idents:
            self.release(ident)
