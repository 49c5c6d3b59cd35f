"""keyless: short-lived, per-worker cloud identity through OIDC workload identity federation.

The public API every host package uses (Airflow provider, Prefect block, Ray plugin). Cloud
SDKs are optional and imported lazily, so ``import keyless`` stays light.
"""

from __future__ import annotations

from .audit import AuditEvent, AuditLog
from .clock import Clock, FakeClock, SystemClock
from .config import KeylessConfig, config_json_schema, load_config
from .context import WorkerContext, render_template, sanitize_session_name
from .errors import (
    ConfigError,
    ExchangeFailed,
    KeylessError,
    SourceMisconfigured,
    SourceUnavailable,
    TokenRejected,
)
from .identity import Keyless
from .refresher import Fetched, Refresher, RefreshPolicy
from .secret import Secret
from .tokens import SubjectToken

__version__ = "0.1.0"

__all__ = [
    "AuditEvent",
    "AuditLog",
    "Clock",
    "ConfigError",
    "ExchangeFailed",
    "FakeClock",
    "Fetched",
    "Keyless",
    "KeylessConfig",
    "KeylessError",
    "RefreshPolicy",
    "Refresher",
    "Secret",
    "SourceMisconfigured",
    "SourceUnavailable",
    "SubjectToken",
    "SystemClock",
    "TokenRejected",
    "WorkerContext",
    "__version__",
    "config_json_schema",
    "load_config",
    "render_template",
    "sanitize_session_name",
]
