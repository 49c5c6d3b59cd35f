"""One config property's JSON schema as an Airflow 3.3 ``conn-fields`` schema (the part of
the connection form :mod:`keyless_airflow.fields` generates per field)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["field_schema"]

_SCALARS = ("string", "integer", "number", "boolean")


def _options(prop: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The non-null alternatives of a property."""
    options = prop.get("anyOf") or prop.get("oneOf") or [prop]
    return [dict(o) for o in options if o.get("type") != "null"]


def field_schema(prop: Mapping[str, Any]) -> dict[str, Any]:
    """A conn-field ``schema`` for one config property (always nullable: fields are optional
    in the form; the config model says what is required)."""
    options = _options(prop)
    if prop.get("secret") or any(o.get("format") == "password" for o in options):
        return {"type": ["string", "null"], "format": "password"}
    if len(options) == 1 and "enum" in options[0]:
        return {"type": ["string", "null"], "enum": list(options[0]["enum"])}
    if len(options) == 1 and options[0].get("type") in _SCALARS:
        out: dict[str, Any] = {"type": [options[0]["type"], "null"]}
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern"):
            if key in options[0]:
                out[key] = options[0][key]
        return out
    if len(options) == 1 and options[0].get("type") == "array":
        items = options[0].get("items", {})
        if items.get("type") == "string":
            return {"type": ["array", "null"], "items": {"type": "string"}}
        return {"type": ["array", "null"]}
    return {"type": ["object", "null"]}  # nested parts ($ref, unions, mappings): JSON
