"""The keyless connection's form, generated from the one config schema, and its inverse.

:func:`conn_fields` turns :func:`keyless.config_json_schema` into Airflow 3.3 ``conn-fields``
(the only form declaration 3.3's UI renders). 3.3's form cannot show or hide a field by the
value of another, but it groups fields into collapsible sections (``schema.section``, in the
order fields first name them) and shows an enum's ``values_display``. So the form is ordered
for the common cases, each field saying which source type or target it is for:

- **Extra Fields** (the UI's own section): ``source_type`` (a dropdown, each type with a short
  description), the source fields of the common cases (``path``; ``token_url``, ``issuer``,
  ``client_id``, ``client_secret``; ``audience``), then the targets' identifiers as flat
  fields (``aws_role_arn``, ``aws_region``, ``gcp_audience`` ... see :mod:`.target_fields`);
- **More source fields**: every other source field (enums as dropdowns, secrets as password
  fields, lists and nested sources as JSON);
- **More target settings**: a few more flat target fields, then ``target`` as JSON for every
  other target property;
- **Refresh, audit, delivery**: those parts as JSON, and ``allow_insecure_http``.

No field carries a UI default, so a form never saves a value the chosen source type does not
take. :func:`keyless_airflow.extra.config_from_extra` reads a connection's extra back into a
:class:`~keyless.config.KeylessConfig` (flat fields, the nested document, Airflow 2 keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keyless import config_json_schema

from .field_schema import field_schema as _field_schema
from .target_fields import COMMON_TARGET_FIELDS, MORE_TARGET_FIELDS, TargetField

__all__ = ["COMMON_SOURCE_FIELDS", "CONN_TYPE", "FLAT_SOURCE_FIELDS", "NESTED_FIELDS", "PREFIX",
           "SECTIONS", "conn_fields"]

CONN_TYPE = "keyless"
#: What Airflow 2-style forms put before each extra field's name.
PREFIX = f"extra__{CONN_TYPE}__"


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
    parts.append("Only for source type " + ", ".join(used_by) + ".")
    return " ".join(parts)


#: Top-level config parts that are JSON objects in the form.
NESTED_FIELDS: tuple[str, ...] = ("target", "refresh", "audit", "delivery")
#: The source fields of the common cases, shown right after ``source_type`` (form order).
COMMON_SOURCE_FIELDS: tuple[str, ...] = ("path", "token_url", "issuer", "client_id",
                                         "client_secret", "audience")
#: The form's sections after the UI's own "Extra Fields", in order.
SECTIONS: tuple[str, ...] = ("More source fields", "More target settings",
                             "Refresh, audit, delivery")


def _first_sentence(text: str) -> str:
    return " ".join(text.split()).split(". ")[0].rstrip(".")


def _source_type_field(schema: Mapping[str, Any]) -> dict[str, Any]:
    variants = _source_variants(schema)
    return {
        "label": "Source type",
        "schema": {"type": ["string", "null"], "enum": [name for name, _ in variants],
                   "values_display": {name: f"{name}: {_first_sentence(v.get('description', ''))}"
                                      for name, v in variants}},
        "description": "Where the workload's OIDC token comes from (default: ambient, the "
                       "first source that applies on this host). The fields below say which "
                       "source type each is for; leave the others empty.",
    }


def _target_field(schema: Mapping[str, Any], name: str, field: TargetField,
                  section: str | None) -> dict[str, Any]:
    ref = f"{field.cloud.capitalize()}Target"
    prop = schema["$defs"][ref]["properties"][field.key]
    required = field.key in schema["$defs"][ref].get("required", ())
    text = prop.get("description", "").strip()
    text = f"{text.rstrip('.')}. " if text else ""
    need = "needed for" if required else "optional, for"
    cloud = {"aws": "an AWS", "gcp": "a GCP", "azure": "an Azure"}.get(field.cloud, field.cloud)
    field_schema = _field_schema(prop)
    if section:
        field_schema["section"] = section
    return {"label": field.label, "schema": field_schema,
            "description": f"{text}`{field.path}` ({need} {cloud} target)."}


def _json_field(schema: Mapping[str, Any], name: str, section: str) -> dict[str, Any]:
    ref = schema["properties"][name]["$ref"].rsplit("/", 1)[1]
    text = schema["$defs"][ref].get("description", "")
    example = (' Every target property the fields above do not offer, e.g. {"aws": '
               '{"policy_arns": ["arn:aws:iam::aws:policy/ReadOnlyAccess"]}}; the fields '
               "above are merged in.") if name == "target" else ""
    return {"label": name.capitalize(), "schema": {"type": ["object", "null"], "section": section},
            "description": f"{text} (JSON; see `keyless schema`).{example}"}


def conn_fields() -> dict[str, dict[str, Any]]:
    """The ``conn-fields`` of the keyless connection type, generated from the config schema,
    in form order (see the module docstring)."""
    schema = _schema()
    more_source, more_target, other = SECTIONS
    fields: dict[str, dict[str, Any]] = {"source_type": _source_type_field(schema)}
    source_fields = {}
    for name, entry in _source_fields(schema).items():
        source_fields[name] = {"label": entry["label"], "schema": entry["schema"],
                               "description": _describe(entry["texts"], entry["used_by"])}
    for name in COMMON_SOURCE_FIELDS:
        fields[name] = source_fields.pop(name)
    for name, field in COMMON_TARGET_FIELDS.items():
        fields[name] = _target_field(schema, name, field, None)
    for name, entry in source_fields.items():
        entry["schema"]["section"] = more_source
        fields[name] = entry
    for name, field in MORE_TARGET_FIELDS.items():
        fields[name] = _target_field(schema, name, field, more_target)
    fields["target"] = _json_field(schema, "target", more_target)
    for name in NESTED_FIELDS[1:]:
        fields[name] = _json_field(schema, name, other)
    insecure = schema["properties"]["allow_insecure_http"]
    fields["allow_insecure_http"] = {
        "label": insecure.get("title", "Allow insecure http"),
        "schema": {"type": ["boolean", "null"], "default": False, "section": other},
        "description": insecure.get("description", ""),
    }
    return fields


def _flat_source_names() -> frozenset[str]:
    return frozenset(_source_fields(_schema()))


#: Names of the flat source fields (the union over every source type).
FLAT_SOURCE_FIELDS: frozenset[str] = _flat_source_names()
