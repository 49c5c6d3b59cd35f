"""``KeylessPlugin``: turns on the Google and Azure provider adapters in Airflow processes.

The Google and Azure providers have no setting naming a credential factory (unlike the
Amazon provider's ``[aws] session_factory``), so keyless wraps one public method of each
(:mod:`keyless_airflow.google`, :mod:`keyless_airflow.azure`: connections that name no keyless
connection are handled by the provider's own code, unchanged). That wrapping must happen in
the task process before a hook is used; Airflow runs a plugin's ``on_load`` there (the task
runner loads plugins when it starts a task). Enable it once per deployment, either way:

- a file in the plugins folder (``$AIRFLOW_HOME/plugins/keyless_plugin.py``) holding the line
  ``from keyless_airflow.plugin import KeylessPlugin``;
- or, with ``[core] lazy_discover_providers = False``, the plugin this provider declares
  (``get_provider_info()["plugins"]``) is loaded without that file.

Code that runs outside Airflow's plugin loading (``airflow_local_settings.py``, a test) can
call :func:`install_provider_adapters` instead.
"""

from __future__ import annotations

import importlib
import logging

from airflow.plugins_manager import AirflowPlugin

__all__ = ["ADAPTERS", "KeylessPlugin", "install_provider_adapters"]

logger = logging.getLogger(__name__)

#: keyless adapter module -> the provider module it needs.
ADAPTERS = {
    "keyless_airflow.google": "airflow.providers.google.common.hooks.base_google",
    "keyless_airflow.azure": "airflow.providers.microsoft.azure.hooks.wasb",
}


def install_provider_adapters() -> list[str]:
    """Install the adapter of every provider that is installed (idempotent); the adapter
    modules installed."""
    installed = []
    for adapter, provider in ADAPTERS.items():
        try:
            importlib.import_module(provider)
        except ImportError:
            logger.debug("keyless: %s is not installed; %s not installed", provider, adapter)
            continue
        importlib.import_module(adapter).install()
        installed.append(adapter)
    return installed


class KeylessPlugin(AirflowPlugin):
    """Installs the keyless adapters of the Google and Azure providers when loaded."""

    name = "keyless"

    @classmethod
    def on_load(cls, *args: object, **kwargs: object) -> None:
        install_provider_adapters()
