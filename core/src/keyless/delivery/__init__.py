"""Delivery: how credentials reach code keyless did not write.

:mod:`.files` (atomic 0600 writes) -> :mod:`.tokenfiles` (token files kept fresh and the SDKs'
own variables) -> :mod:`.loopback` (loopback-only HTTP servers) -> :mod:`.peer` and
:mod:`.launch` (which local process is calling, and may it) -> :mod:`.credential_server` (the
AWS container-credentials endpoint, per calling process), :mod:`.azure_endpoint` (the Azure
managed-identity endpoint) -> :mod:`.child` (the whole environment of a command keyless
starts)."""

from .tokenfiles import (
    ENDPOINT_SHADOWED_VARIABLES,
    SHADOWING_VARIABLES,
    STATIC_AWS_VARIABLES,
    TokenDirectory,
    TokenFileKeeper,
    delivery_audiences,
    endpoint_environment,
    narrowing_fields,
    sdk_environment,
    shadowing_variables,
    worker_environment,
)

__all__ = ["ENDPOINT_SHADOWED_VARIABLES", "SHADOWING_VARIABLES", "STATIC_AWS_VARIABLES",
           "TokenDirectory", "TokenFileKeeper", "delivery_audiences", "endpoint_environment",
           "narrowing_fields", "sdk_environment", "shadowing_variables", "worker_environment"]
