"""keyless_airflow: the ``keyless`` connection type and hook for Airflow 3.3.

- :func:`get_provider_info` (entry point ``apache_airflow_provider``): the connection type,
  its form (``conn-fields`` generated from ``keyless.config_json_schema()``) and hook;
- :class:`KeylessHook` (``keyless_airflow.hooks``): boto3 sessions and clients, Google and
  Azure credentials, raw tokens, ``worker_env()`` for subprocesses, ``test_connection()``;
- :class:`~keyless_airflow.aws.KeylessSessionFactory`: ``[aws] session_factory`` so the Amazon
  provider's hooks (``S3Hook`` ...) run on keyless credentials.

Importing this package does not import Airflow; the hook and the session factory are loaded
on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .extra import config_from_extra
from .fields import conn_fields
from .provider_info import get_provider_info

if TYPE_CHECKING:
    from .aws import KeylessSessionFactory
    from .hooks import KeylessHook

__version__ = "0.1.0"

__all__ = ["KeylessHook", "KeylessSessionFactory", "__version__", "config_from_extra",
           "conn_fields", "get_provider_info"]

_LAZY = {"KeylessHook": "hooks", "KeylessSessionFactory": "aws"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
