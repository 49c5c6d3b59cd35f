"""Which config fields hold a secret: read from the schema's own ``secret`` flag."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

from ..config import config_json_schema

__all__ = ["secret_fields", "secret_paths"]


def _flagged(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        for name, prop in (node.get("properties") or {}).items():
            if isinstance(prop, Mapping) and prop.get("secret"):
                yield str(name)
        for child in node.values():
            yield from _flagged(child)
    elif isinstance(node, list):
        for child in node:
            yield from _flagged(child)


@functools.cache
def secret_fields() -> frozenset[str]:
    """The names of the config fields the schema flags ``secret`` (``client_secret``,
    ``private_key`` ...), wherever they appear."""
    return frozenset(_flagged(config_json_schema()))


def secret_paths(value: Any, path: str = "") -> list[str]:
    """The dotted paths in a config mapping (as a user wrote it) that hold a non-empty secret
    field, in document order."""
    found: list[str] = []
    if isinstance(value, Mapping):
        for key, child in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key in secret_fields() and child not in (None, ""):
                found.append(where)
            else:
                found.extend(secret_paths(child, where))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.extend(secret_paths(child, f"{path}.{index}"))
    return found
