"""One config's refresher on a node (:class:`NodeEntry`) and how it starts
(:func:`start_entry`): the agent's first subject tokens, fetched with retries of transient
errors, written as token files kept fresh, plus the worker manifest."""

from __future__ import annotations

import json
import logging
import socket
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

from .intake import MANIFEST_NAME, is_transient, worker_manifest
from .lifecycle import DirectoryWatchdog
from .names import MANIFEST_VARIABLE, MARKER_VARIABLE

__all__ = ["NodeEntry", "agent_identity", "start_entry"]

logger = logging.getLogger("keyless_ray.agent")


def agent_identity(config: KeylessConfig) -> Keyless:
    """The agent's own identity for ``config`` (the node's host name as its context)."""
    return Keyless(config, context=WorkerContext(host=socket.gethostname()))


@dataclass
class NodeEntry:
    """One config's refresher on this node, its files and the variables for its workers;
    ``generation`` counts its starts on this node, ``last_seen``/``last_prepared`` (monotonic
    seconds) when a process last used it and when a worker was last set up with it."""

    ident: str
    keeper: TokenFileKeeper
    directory: TokenDirectory
    manifest: Path
    sdk_env: dict[str, str] = field(default_factory=dict)
    generation: int = 0
    watchdog: DirectoryWatchdog | None = None
    last_seen: float = field(default_factory=time.monotonic)
    last_prepared: float = field(default_factory=time.monotonic)

    def env_vars(self) -> dict[str, str]:
        """Paths, ids and the marker only (Ray logs these in plaintext)."""
        return {**self.sdk_env, MARKER_VARIABLE: self.ident, MANIFEST_VARIABLE: str(self.manifest)}

    def stop(self) -> None:
        """Stop refreshing and remove the token files (the watchdog with them)."""
        self.keeper.stop()
        self.directory.cleanup()
        if self.watchdog is not None:
            self.watchdog.close()


def start_entry(config: KeylessConfig, ident: str, factory: Callable[[KeylessConfig], Keyless],
                attempts: int, sleep: Callable[[float], None]) -> NodeEntry:
    """Start ``config``'s refresher: up to ``attempts`` tries through transient errors,
    waiting the config's backoff between them; a permanent error is raised at once. Nothing
    is left on disk when it raises."""
    policy = RefreshPolicy.from_spec(config.refresh)
    base = config.delivery.token_dir
    directory = TokenDirectory(Path(base) / f"ray-{ident}" if base else None)
    try:
        for attempt in range(1, attempts + 1):
            identity = factory(config)
            keeper = TokenFileKeeper(identity, directory)
            try:
                keeper.start()
                break
            except (SourceUnavailable, ExchangeFailed) as exc:
                if not is_transient(exc) or attempt == attempts:
                    raise
                logger.warning("keyless: config %s: attempt %d failed (%s), retrying",
                               ident, attempt, type(exc).__name__)
                sleep(policy.backoff_cap(attempt))
        manifest = write_private_file(
            directory.path / MANIFEST_NAME,
            json.dumps(worker_manifest(identity, ident, keeper.files)))
        entry = NodeEntry(ident=ident, keeper=keeper, directory=directory, manifest=manifest,
                          watchdog=DirectoryWatchdog(directory.path),
                          # shared by every worker of the node: a per-worker session policy
                          # or boundary is left out (each worker's endpoint applies it)
                          sdk_env=sdk_environment(identity, keeper.files, narrowed="omit"))
    except BaseException:
        directory.cleanup()
        raise
    logger.info("keyless: config %s: token files kept fresh in %s", ident, directory.path)
    return entry
