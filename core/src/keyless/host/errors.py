"""Host-prefixed config errors."""

from __future__ import annotations

from ..errors import ConfigError

__all__ = ["host_config_error"]


def host_config_error(where: str, error: ConfigError) -> ConfigError:
    """``error`` as seen from a host (``where``: ``airflow connection 'x'``, ``prefect block``,
    ``ray-keyless: runtime_env['keyless']``): its message prefixed, its field path kept."""
    return ConfigError(f"{where}: {error.message}", field=error.field)
