"""keyless: short-lived, per-worker cloud identity through OIDC workload identity federation.

The public API every host package uses (Airflow provider, Prefect block, Ray plugin). Cloud
SDKs are optional and imported lazily, so ``import keyless`` stays light. The package map is
in docs/architecture.md; :data:`MOVED` keeps the module paths of the previous release
importing (``keyless.credential_server`` is ``keyless.delivery.credential_server``) for one
release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

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

#: Module paths of the previous release -> where the module lives now. Importing an old path
#: gives the new module itself (same object, same classes); removed in the next release.
MOVED: dict[str, str] = {
    "keyless.audit_html": "keyless.audit.html",
    "keyless.audit_report": "keyless.audit.report",
    "keyless.audit_sinks": "keyless.audit.sinks",
    "keyless.cli_audit": "keyless.cli.audit",
    "keyless.cli_demo": "keyless.cli.demo",
    "keyless.cli_devissuer": "keyless.cli.devissuer",
    "keyless.commands_serve": "keyless.cli.serve",
    "keyless.credential_server": "keyless.delivery.credential_server",
    "keyless.demo": "keyless.dev.demo",
    "keyless.demo_worker": "keyless.dev.demo_worker",
    "keyless.devissuer": "keyless.dev.issuer",
    "keyless.doctor": "keyless.verify.doctor",
    "keyless.files": "keyless.delivery.files",
    "keyless.loopback": "keyless.delivery.loopback",
    "keyless.process": "keyless.dev.process",
    "keyless.sources._common": "keyless.http",
    "keyless.verify_asgi": "keyless.verify.asgi",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module path of :data:`MOVED` to the module at its new path."""

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # a placeholder: exec_module puts the real module in its place

    def exec_module(self, module: ModuleType) -> None:
        sys.modules[module.__name__] = importlib.import_module(MOVED[module.__name__])


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())

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
