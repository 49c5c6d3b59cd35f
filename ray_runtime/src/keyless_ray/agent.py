"""The node side: one token-file refresher per config per node, in the runtime-env agent.

Everything here is blocking and thread-safe; :class:`~keyless_ray.plugin.KeylessPlugin` calls it
from an executor so the agent's event loop never waits on an IdP.

- :func:`parse_runtime_env_value` validates a ``runtime_env["keyless"]`` value: the keyless
  config schema, minus inline secrets (``client_secret``, ``private_key``): Ray writes runtime
  envs in plaintext to the agent's log and the dashboard, so a secret there is refused with a
  :class:`~keyless.ConfigError` naming the field (the value is never echoed).
- :func:`config_id`: a stable id for a validated config (sha256 prefix of its canonical JSON,
  which holds no secret), the key of everything per node.
- :class:`NodeRegistry`: ``ensure(config)`` starts (or reuses) the config's
  :class:`~keyless.delivery.TokenFileKeeper` and writes the worker manifest; transient source
  errors are retried with the config's backoff before giving up; ``release(id)`` stops the
  keeper and removes its files. Nothing is cached on failure (Ray caches a failed env itself,
  ten minutes by default, then asks again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keyless import (
    ConfigError,
    ExchangeFailed,
    Keyless,
    KeylessConfig,
    RefreshPolicy,
    SourceUnavailable,
    WorkerContext,
    load_config,
)
from keyless.delivery import TokenDirectory, TokenFileKeeper, sdk_environment
from keyless.delivery.files import write_private_file
from keyless.host import secret_fields, secret_paths

from .names import MANIFEST_VARIABLE, MARKER_VARIABLE, PLUGIN_NAME

__all__ = ["SECRET_FIELDS", "NodeEntry", "NodeRegistry", "config_id", "is_transient",
           "parse_runtime_env_value", "worker_manifest"]

logger = logging.getLogger("keyless_ray.agent")

#: Config fields that hold a secret (the schema's ``secret`` flag): refused inline in a runtime env.
SECRET_FIELDS = tuple(sorted(secret_fields()))
MANIFEST_NAME = "worker-manifest.json"


def parse_runtime_env_value(value: Any) -> KeylessConfig:
    """Validate a ``runtime_env["keyless"]`` value; raises ConfigError naming the field."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"ray-keyless: runtime_env['{PLUGIN_NAME}'] must be a mapping (the "
                          f"keyless config: source, target, ...), got {type(value).__name__}; "
                          "fix: see `keyless schema`")
    secrets = secret_paths(value)
    if secrets:
        raise ConfigError(
            f"ray-keyless: {secrets[0]}: a secret inline in a runtime env is refused: Ray writes "
            "runtime envs in plaintext to the runtime-env agent's log and the dashboard; fix: "
            "use a source with no secret on the cluster (`file` with a projected "
            "service-account token, or `command` running `python -m keyless token --config "
            "FILE --raw` with FILE private to the node), and rotate that secret",
            field=secrets[0])
    try:
        return load_config(dict(value))
    except ConfigError as exc:
        raise ConfigError(f"ray-keyless: runtime_env['{PLUGIN_NAME}']: {exc.message}",
                          field=exc.field) from None


def config_id(config: KeylessConfig) -> str:
    """A stable id for a validated config: 16 hex chars of sha256 over its canonical JSON."""
    document = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(document.encode()).hexdigest()[:16]


def is_transient(error: BaseException) -> bool:
    """True for errors a later attempt may cure (IdP down, throttling, timeouts)."""
    return isinstance(error, SourceUnavailable) or (
        isinstance(error, ExchangeFailed) and error.retryable)


def _target_audiences(identity: Keyless) -> dict[str, str]:
    """Target name -> the audience of its subject tokens (keyless's one rule for all)."""
    return {name: identity.target_audience(name) for name in identity.config.target.configured()}


def worker_manifest(identity: Keyless, ident: str, files: Mapping[str, Path]) -> dict[str, Any]:
    """What a worker needs to build its own identity: the config without its source (so no
    secret), the token file of each audience and of each target that has one."""
    audiences = {audience: str(path) for audience, path in files.items()}
    targets = {name: audiences[aud] for name, aud in _target_audiences(identity).items()
               if aud in audiences}
    default = identity.resolve_audience()
    return {"version": 1, "id": ident,
            "config": identity.config.model_dump(mode="json", exclude={"source"}),
            "audiences": audiences, "targets": targets,
            "default_file": audiences.get(default, next(iter(audiences.values()), ""))}


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
