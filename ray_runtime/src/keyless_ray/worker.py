"""The worker side: this Ray worker's own identity, resolved inside the worker.

The node's plugin keeps one token file per audience fresh and points the worker at a manifest
(``$KEYLESS_RAY_MANIFEST``: the config without its source, and the token-file paths). Here each
worker builds its own :class:`~keyless.Keyless` whose source is that file, and whose context
names this worker, so session names, session policies and tags are rendered per worker:

- ``{job_id}``: the Ray job id; ``{node}``: the node id (12 hex); ``{task_id}``: the Ray worker
  id (12 hex); ``{run_id}``: the Ray Train experiment name under Ray Train;
- ``{rank}`` / ``{local_rank}``: the Ray Train world / local rank, read when a helper is called
  (``ray.train.get_context()``, else ``$RANK`` / ``$LOCAL_RANK``): Ray Train sets them after
  the worker process starts, so call the helpers inside the training function;
- ``{pid}``, ``{host}``: this process.

Every helper is lazy and cached per process and per context. Without the plugin on this node
(``$KEYLESS_RAY`` unset) every helper raises :class:`~keyless.ConfigError` naming
``RAY_RUNTIME_ENV_PLUGINS``: a worker never silently runs without credentials.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keyless import ConfigError, Keyless, WorkerContext
from keyless.host import ProcessCache

from .names import MANIFEST_VARIABLE, MARKER_VARIABLE, PLUGIN_SETTING, missing_plugin_message

if TYPE_CHECKING:
    import boto3


__all__ = ["boto3_session", "flush_audit", "google_credentials", "identity", "setup", "token",
           "worker_context"]

_lock = threading.Lock()
#: This worker process's identities, per (config, token file, worker context).
_identities: ProcessCache[tuple[str, str, WorkerContext], Keyless] = ProcessCache(1024)


def _manifest(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    if not env.get(MARKER_VARIABLE) or not env.get(MANIFEST_VARIABLE):
        raise ConfigError(missing_plugin_message("ray-keyless"), field=PLUGIN_SETTING)
    path = env[MANIFEST_VARIABLE]
    try:
        manifest: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"ray-keyless: cannot read the worker manifest {path!r} "
                          f"({type(exc).__name__}): its config's refresher on this node was "
                          "stopped or never started; fix: run the work with its "
                          "runtime_env['keyless'] (do not copy KEYLESS_RAY_* variables)") from None
    return manifest


def _short(value: Any) -> str:
    text = "" if value is None else str(value)
    return text[:12]


def _train_ranks() -> tuple[str, str, str] | None:
    """(world rank, local rank, experiment name) inside a Ray Train worker, else None."""
    train = sys.modules.get("ray.train")
    if train is None:
        return None
    try:
        context = train.get_context()
        return (str(context.get_world_rank()), str(context.get_local_rank()),
                str(context.get_experiment_name()))
    except Exception:  # not in a Train worker (or not yet)
        return None


def worker_context() -> WorkerContext:
    """Who this worker is right now (see the module docstring for the fields)."""
    values: dict[str, str] = {}
    ray = sys.modules.get("ray")
    if ray is not None:
        try:
            runtime = ray.get_runtime_context()
            values["job_id"] = str(runtime.get_job_id() or "")
            values["node"] = _short(runtime.get_node_id())
            values["task_id"] = _short(runtime.get_worker_id())
        except Exception:  # not connected to Ray: leave them empty
            values.clear()
    ranks = _train_ranks()
    if ranks is not None:
        values["rank"], values["local_rank"], values["run_id"] = ranks
    return WorkerContext.from_environment().with_values(**values)


def _file_config(manifest: Mapping[str, Any], target: str | None,
                 path: str) -> dict[str, Any]:
    config = dict(manifest["config"])
    if target is not None:
        config["target"] = {target: config["target"][target]}
    config["source"] = {"type": "file", "path": path}
    return config


def identity(target: str | None = "aws", *, audience: str | None = None) -> Keyless:
    """This worker's :class:`~keyless.Keyless` for ``target`` (``"aws"``, ``"gcp"``,
    ``"azure"``), reading the node's token file; ``target=None`` with ``audience``: the whole
    config over that audience's file. Cached per process, target and worker context."""
    manifest = _manifest()
    if target is not None:
        if target not in manifest.get("targets", {}):
            raise ConfigError(f"ray-keyless: target.{target} is not configured in this "
                              f"runtime env's keyless config; fix: add target.{target}",
                              field=f"target.{target}")
        path = str(manifest["targets"][target])
    elif audience is not None:
        files = manifest.get("audiences", {})
        if audience not in files:
            raise ConfigError(f"ray-keyless: no token file for audience {audience!r}; the "
                              f"config's audiences are {sorted(files)}", field="audience")
        path = str(files[audience])
    else:
        path = str(manifest["default_file"])
    context = worker_context()
    key = (str(manifest["id"]), f"{target}:{path}", context)
    found, _ = _identities.get(
        key, lambda: Keyless(_file_config(manifest, target, path), context=context))
    return found


def flush_audit() -> None:
    """Flush the audit sinks of every identity this worker process built (the MLflow sink
    writes its tags, this worker's part and the merged timeline now). Call it at the end of a
    Ray Train loop: a worker actor is not promised an interpreter exit, where it would happen
    otherwise. Best effort per sink, like :meth:`keyless.audit.AuditLog.close`."""
    for found in _identities.values():
        found.audit.close()


def boto3_session() -> boto3.Session:
    """A ``boto3.Session`` for this worker (its own session name and session policy),
    refreshing itself from the node's token file."""
    return identity("aws").boto3_session()


def google_credentials() -> Any:
    """This worker's ``google.auth.credentials.Credentials`` (needs ``keyless[gcp]``)."""
    return identity("gcp").google_credentials()


def token(audience: str | None = None) -> str:
    """The current subject token (the JWT) for ``audience`` (default: the config's first).
    Hand it only to the party it is meant for."""
    return identity(None, audience=audience).token()


def setup() -> None:
    """Check this worker has a keyless identity and name its AWS session for this worker.

    Usable as ``runtime_env={"worker_process_setup_hook": "keyless_ray.setup", ...}``. Raises
    :class:`~keyless.ConfigError` naming ``RAY_RUNTIME_ENV_PLUGINS`` when the node never ran
    the plugin. With a ``target.aws``, ``$AWS_ROLE_SESSION_NAME`` (read by unmodified boto3
    through the web-identity variables) is rendered for this worker.
    """
    manifest = _manifest()
    if "aws" in manifest.get("targets", {}):
        os.environ["AWS_ROLE_SESSION_NAME"] = identity("aws").aws().session_name
