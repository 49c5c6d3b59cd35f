"""The keyless connection's form, generated from the one config schema, and its inverse.

:func:`conn_fields` turns :func:`keyless.config_json_schema` into Airflow 3.3 ``conn-fields``
(the only form declaration 3.3's UI renders): ``source_type`` is a dropdown of source types;
every field of every source variant is a flat field (enums as dropdowns, secrets as password
fields, lists and nested sources as JSON); ``target``, ``refresh``, ``audit`` and ``delivery``
are JSON objects; ``allow_insecure_http`` is a switch. Source fields get no UI default, so a
form never saves a value the chosen source type does not take.

:func:`config_from_extra` reads a connection's extra back into a
:class:`~keyless.config.KeylessConfig`. It accepts the flat form above, the nested config
document (``{"source": {...}, "target": {...}}``, the natural ``AIRFLOW_CONN_<ID>`` JSON) and
Airflow 2's ``extra__keyless__<field>`` keys; JSON given as text is parsed. It raises
:class:`~keyless.errors.ConfigError` naming the field at fault, never showing a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keyless import config_json_schema

__all__ = ["CONN_TYPE", "FLAT_SOURCE_FIELDS", "NESTED_FIELDS", "PREFIX", "conn_fields"]

CONN_TYPE = "keyless"
#: What Airflow 2-style forms put before each extra field's name.
PREFIX = f"extra__{CONN_TYPE}__"
_SCALARS = ("string", "integer", "number", "boolean")


def _schema() -> dict[str, Any]:
    return config_json_schema()


def _source_variants(schema: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(type, variant schema) for every source type, in the schema's order."""
    mapping: dict[str, str] = schema["properties"]["source"]["discriminator"]["mapping"]
    defs: dict[str, Any] = schema["$defs"]
    by_ref = {ref: name for name, ref in mapping.items()}
    variants = []
    for option in schema["properties"]["source"]["oneOf"]:
        ref = option["$ref"]
        variants.append((by_ref[ref], defs[ref.rsplit("/", 1)[1]]))
    return variants


def _options(prop: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The non-null alternatives of a property."""
    options = prop.get("anyOf") or prop.get("oneOf") or [prop]
    return [dict(o) for o in options if o.get("type") != "null"]


def _field_schema(prop: Mapping[str, Any]) -> dict[str, Any]:
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


def _merge(existing: dict[str, Any], new: dict[str, Any]) -> None:
    """Two source types share a field name: one field, enums united, bounds dropped where
    they differ, each type's own description kept (see :func:`_describe`)."""
    old, add = existing["schema"], new["schema"]
    if "enum" in old and "enum" in add:
        old["enum"] = list(dict.fromkeys([*old["enum"], *add["enum"]]))
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern"):
        if old.get(key) != add.get(key):
            old.pop(key, None)
    existing["used_by"].extend(new["used_by"])
    existing["texts"].update(new["texts"])


def _source_fields(schema: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    fields: dict[str, dict[str, Any]] = {}
    for type_name, variant in _source_variants(schema):
        for name, prop in variant["properties"].items():
            if name == "type":
                continue
            entry = {"label": prop.get("title", name), "schema": _field_schema(prop),
                     "texts": {type_name: prop.get("description", "")},
                     "used_by": [type_name]}
            if name in fields:
                _merge(fields[name], entry)
            else:
                fields[name] = entry
    return fields


def _describe(texts: Mapping[str, str], used_by: list[str]) -> str:
    """A shared field's help text: the one description when every source type using the
    field says the same, otherwise each description followed by the types it is about (a
    form user reads what the field means for the type they chose); then the types."""
    by_text: dict[str, list[str]] = {}
    for type_name in used_by:
        text = texts.get(type_name, "").strip()
        if text:
            by_text.setdefault(text, []).append(type_name)
    parts: list[str]
    if len(by_text) == 1 and len(next(iter(by_text.values()))) == len(used_by):
        parts = [next(iter(by_text))]
    else:
        parts = [f"{text.rstrip('.')} ({', '.join(types)})." for text, types in by_text.items()]
    parts.append("Source " + ", ".join(used_by) + ".")
    return " ".join(parts)


#: Top-level config parts that are JSON objects in the form.
NESTED_FIELDS: tuple[str, ...] = ("target", "refresh", "audit", "delivery")


def conn_fields() -> dict[str, dict[str, Any]]:
    """The ``conn-fields`` of the keyless connection type, generated from the config schema."""
    schema = _schema()
    types = [name for name, _ in _source_variants(schema)]
    fields: dict[str, dict[str, Any]] = {
        "source_type": {
            "label": "Source type",
            "schema": {"type": ["string", "null"], "enum": types},
            "description": "Where the workload's OIDC token comes from (default: ambient, "
                           "the first source that applies on this host).",
        },
    }
    for name, entry in _source_fields(schema).items():
        fields[name] = {"label": entry["label"], "schema": entry["schema"],
                        "description": _describe(entry["texts"], entry["used_by"])}
    defs = schema["$defs"]
    for name in NESTED_FIELDS:
        ref = schema["properties"][name]["$ref"].rsplit("/", 1)[1]
        text = defs[ref].get("description", "")
        example = ' e.g. {"aws": {"role_arn": "arn:aws:iam::123456789012:role/NAME", ' \
                  '"region": "us-east-1"}}' if name == "target" else ""
        fields[name] = {"label": name.capitalize(), "schema": {"type": ["object", "null"]},
                        "description": f"{text} (JSON; see `keyless schema`){example}"}
    insecure = schema["properties"]["allow_insecure_http"]
    fields["allow_insecure_http"] = {
        "label": insecure.get("title", "Allow insecure http"),
        "schema": {"type": ["boolean", "null"], "default": False},
        "description": insecure.get("description", ""),
    }
    return fields


def _flat_source_names() -> frozenset[str]:
    return frozenset(_source_fields(_schema()))


#: Names of the flat source fields (the union over every source type).
FLAT_SOURCE_FIELDS: frozenset[str] = _flat_source_names()
