"""keyless_ray: every Ray worker gets its own refreshed cloud identity (``ray-keyless``).

Node side: :class:`KeylessPlugin`, the runtime-env plugin named ``keyless``, registered on every
node with ``RAY_RUNTIME_ENV_PLUGINS='[{"class":"keyless_ray.KeylessPlugin"}]'``; optional
submit-time validation with ``RAY_RUNTIME_ENV_PLUGIN_SCHEMAS`` (``python -m
keyless_ray.schema``; Ray applies it to ``RuntimeEnv.set("keyless", ...)`` only). Worker side:
:func:`setup` (a ``worker_process_setup_hook``) and the lazy helpers :func:`boto3_session`,
:func:`google_credentials`, :func:`token` and :func:`credential_endpoint`, which resolve the
worker's identity (job, node, worker, Ray Train rank) inside the worker. ``KeylessPlugin`` is
imported lazily: the worker helpers need only keyless.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .bootstrap import credential_endpoint
from .names import MANIFEST_VARIABLE, MARKER_VARIABLE, PLUGIN_NAME, PLUGIN_SETTING, PLUGIN_SPEC
from .schema import ray_schema, write_schema
from .worker import (
    boto3_session,
    flush_audit,
    google_credentials,
    identity,
    setup,
    token,
    worker_context,
)

if TYPE_CHECKING:
    from .plugin import KeylessPlugin

__version__ = "0.1.0"

__all__ = ["KeylessPlugin", "MANIFEST_VARIABLE", "MARKER_VARIABLE", "PLUGIN_NAME",
           "PLUGIN_SETTING", "PLUGIN_SPEC", "__version__", "boto3_session", "credential_endpoint",
           "flush_audit", "google_credentials", "identity", "ray_schema", "setup", "token",
           "worker_context", "write_schema"]


def __getattr__(name: str) -> Any:
    if name == "KeylessPlugin":
        from .plugin import KeylessPlugin

        return KeylessPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
