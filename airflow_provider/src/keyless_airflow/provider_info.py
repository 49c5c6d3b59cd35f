"""``get_provider_info()``: what the ``apache_airflow_provider`` entry point hands Airflow.

Kept free of Airflow imports: the providers manager loads it in every Airflow process (API
server, scheduler, workers) before anything else. Airflow 3.3's UI renders only the
declarative ``conn-fields`` and ``ui-field-behaviour`` (hook WTForms methods are ignored).
"""

from __future__ import annotations

from typing import Any

from .fields import CONN_TYPE, conn_fields

__all__ = ["DISTRIBUTION", "HIDDEN_FIELDS", "HOOK_CLASS", "HOOK_NAME", "PLUGIN_CLASS",
           "get_provider_info"]

#: The canonical distribution name: Airflow refuses a provider whose ``package-name`` differs.
DISTRIBUTION = "airflow-provider-keyless"
HOOK_CLASS = "keyless_airflow.hooks.KeylessHook"
HOOK_NAME = "OIDC workload identity (keyless)"
#: Installs the Google and Azure provider adapters (see :mod:`keyless_airflow.plugin`).
PLUGIN_CLASS = "keyless_airflow.plugin.KeylessPlugin"
#: Standard connection fields that mean nothing here (the config lives in the extra fields).
HIDDEN_FIELDS = ["host", "port", "login", "schema", "password"]


def get_provider_info() -> dict[str, Any]:
    """The provider's metadata (validated by Airflow against provider_info.schema.json)."""
    from . import __version__

    return {
        "package-name": DISTRIBUTION,
        "name": "keyless",
        "description": "Short-lived, per-task cloud identity through OIDC workload identity "
                       "federation: no long-lived key stored in Airflow.",
        "versions": [__version__],
        "integrations": [{"integration-name": "keyless", "tags": ["service"]}],
        "hooks": [{"integration-name": "keyless", "python-modules": ["keyless_airflow.hooks"]}],
        # loaded by Airflow when it discovers providers eagerly ([core] lazy_discover_providers
        # = False); else enable it with one line in the plugins folder (keyless_airflow.plugin)
        "plugins": [{"name": "keyless", "plugin-class": PLUGIN_CLASS}],
        "connection-types": [{
            "connection-type": CONN_TYPE,
            "hook-class-name": HOOK_CLASS,
            "hook-name": HOOK_NAME,
            "conn-fields": conn_fields(),
            "ui-field-behaviour": {
                "hidden-fields": list(HIDDEN_FIELDS),
                "relabeling": {},
                "placeholders": {},
            },
        }],
    }
