"""``KeylessPlugin``: the Ray runtime-env plugin named ``keyless`` (Ray 2.60, pinned API).

Register it on every node before Ray starts there::

    RAY_RUNTIME_ENV_PLUGINS='[{"class":"keyless_ray.KeylessPlugin"}]' ray start ...
    RAY_RUNTIME_ENV_PLUGIN_SCHEMAS=/path/to/keyless.json   # optional: validated at submit time

and give work ``runtime_env={"keyless": <keyless config>}``. It runs in each node's runtime-env
agent (``ray._private.runtime_env.plugin.RuntimeEnvPlugin``, a private API: pinned to 2.60):

- :meth:`validate` checks the config (schema, no inline secret); a failure becomes Ray's
  ``RuntimeEnvSetupError`` with a message naming the field.
- :meth:`get_uris` never raises (it runs for every runtime env on the node, with or without
  ``keyless``): ``["keyless://<config id>.<generation>"]`` or ``[]``. A config the node
  stopped (idle, :mod:`keyless_ray.lifecycle`) has a new generation, so Ray creates it again.
- :meth:`create` is idempotent and never blocks the agent's event loop: the work (first IdP
  fetch with retries of transient errors, token files, worker manifest) runs in an executor and
  starts or reuses the node's one refresher for that config (:class:`~keyless_ray.agent.
  NodeRegistry`).
- :meth:`modify_context` adds only paths, ids and the marker variable to ``context.env_vars``,
  and puts :mod:`keyless_ray.bootstrap`'s ``sitecustomize`` first on the worker's
  ``PYTHONPATH``: every Python process of the worker serves itself its own AWS identity (no
  setup hook, no code in the task).
- :meth:`delete_uri` stops the refresher of that generation (one of three ways it stops: the
  watcher's idle sweep and the agent's exit are the others). Ray's per-plugin URI cache
  deletes an unused URI only once the cache is over its size
  (``RAY_RUNTIME_ENV_KEYLESS_CACHE_SIZE_GB``, default 10), so :meth:`create` reports each
  config as the whole cache size plus one byte: a config's refresher is stopped as soon as its
  last runtime env is released, never while one is in use.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from ray._private.runtime_env.context import RuntimeEnvContext
from ray._private.runtime_env.plugin import RuntimeEnvPlugin
from ray._private.runtime_env.working_dir import set_pythonpath_in_context

from .agent import NodeEntry, NodeRegistry, config_id, parse_runtime_env_value
from .bootstrap import SITE_DIRECTORY
from .names import PLUGIN_NAME, URI_SCHEME

__all__ = ["KeylessPlugin", "cache_limit_bytes"]

_module_logger = logging.getLogger("keyless_ray.plugin")

#: The registry of the agent process (one per node).
_REGISTRY = NodeRegistry(watch=True)


def cache_limit_bytes(environ: dict[str, str] | None = None) -> int:
    """The size limit Ray gives this plugin's URI cache (same formula as Ray's)."""
    env = os.environ if environ is None else environ
    try:
        gigabytes = float(env.get(f"RAY_RUNTIME_ENV_{PLUGIN_NAME}_CACHE_SIZE_GB".upper(), 10))
    except ValueError:
        gigabytes = 10.0
    return int((1024**3) * gigabytes)


def _value(runtime_env: Any) -> Any:
    try:
        return runtime_env.get(PLUGIN_NAME)
    except AttributeError:
        return None


class KeylessPlugin(RuntimeEnvPlugin):
    """Per-node token-file refreshers for ``runtime_env["keyless"]`` (see module docstring)."""

    name = PLUGIN_NAME

    def __init__(self, registry: NodeRegistry | None = None) -> None:
        self.registry = registry if registry is not None else _REGISTRY

    @staticmethod
    def validate(runtime_env_dict: dict[str, Any]) -> None:
        """Raise ConfigError (naming the field) for an invalid ``keyless`` value."""
        value = _value(runtime_env_dict)
        if value is not None:
            parse_runtime_env_value(value)

    def get_uris(self, runtime_env: Any) -> list[str]:
        """``["keyless://<config id>"]``; ``[]`` without a (valid) keyless value. Never raises."""
        try:
            value = _value(runtime_env)
            if value is None:
                return []
            return [self.registry.uri(config_id(parse_runtime_env_value(value)))]
        except Exception:  # an exception here would fail every env on the node
            return []

    async def create(self, uri: str | None, runtime_env: Any, context: RuntimeEnvContext,
                     logger: logging.Logger = _module_logger) -> float:
        """Start or reuse this config's refresher; returns the size reported to Ray's cache."""
        value = _value(runtime_env)
        if value is None:
            return 0
        config = parse_runtime_env_value(value)
        loop = asyncio.get_running_loop()
        entry: NodeEntry = await loop.run_in_executor(None, self.registry.ensure, config)
        logger.info("keyless: config %s ready on this node", entry.ident)
        return float(cache_limit_bytes() + 1)

    def modify_context(self, uris: list[str], runtime_env: Any, context: RuntimeEnvContext,
                       logger: logging.Logger = _module_logger) -> None:
        """Add the worker variables: token-file paths, ids, the marker; never a secret."""
        value = _value(runtime_env)
        if value is None:
            return
        config = parse_runtime_env_value(value)
        ident = config_id(config)
        entry = self.registry.get(ident)
        if entry is None:  # stopped as idle after Ray looked up its URI: start it again here
            logger.info("keyless: config %s was stopped as idle just now; starting it again",
                        ident)
            entry = self.registry.ensure(config)
        self.registry.prepared(ident)
        context.env_vars.update(entry.env_vars())
        set_pythonpath_in_context(str(SITE_DIRECTORY), context)
        logger.info("keyless: config %s: worker variables set (paths and ids only)", ident)

    def delete_uri(self, uri: str, logger: logging.Logger = _module_logger) -> float:
        """Stop the refresher of ``uri``'s config; returns the size given back to the cache."""
        ident, _, generation = uri.removeprefix(URI_SCHEME).partition(".")
        if not uri.startswith(URI_SCHEME) or not generation.isdigit():
            return 0
        released = self.registry.release(ident, int(generation))
        logger.info("keyless: %s deleted (refresher %s)", uri,
                    "stopped" if released else "already gone")
        return float(cache_limit_bytes() + 1)
