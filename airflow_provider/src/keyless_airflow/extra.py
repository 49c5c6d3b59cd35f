"""The inverse of the connection form (:mod:`.fields`): the keyless config in a connection's
extra, given as the form's flat fields or as the nested document.

Accepted, in any mix the form can save: ``source_type`` and the flat source fields, or
``source`` as JSON (not both); the flat target fields (``aws_role_arn`` ... see
:mod:`.target_fields`) merged into ``target`` (JSON, optional when flat target fields are
given); ``refresh``, ``audit``, ``delivery`` (JSON objects, or their text);
``allow_insecure_http``; Airflow 2's ``extra__keyless__<field>`` keys; empty values are
ignored. Errors are :class:`~keyless.errors.ConfigError` naming the field, never a value."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from keyless import ConfigError, KeylessConfig, load_config
from keyless.host import host_config_error

from .fields import FLAT_SOURCE_FIELDS, NESTED_FIELDS, PREFIX
from .target_fields import TARGET_FIELDS, fold_targets

__all__ = ["config_from_extra"]


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _json_value(name: str, value: Any, where: str) -> Any:
    """A JSON field given as text (the UI or an env var may store it so) parsed."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise ConfigError(f"{where}: extra field {name!r} is not valid JSON; fix: give a JSON "
                          "object (see `keyless schema`)", field=name) from None


def _normalise(extra: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in extra.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if not _empty(value):
            values[name] = value
    return values


def config_from_extra(extra: Mapping[str, Any], *, where: str = "airflow connection",
                      ) -> KeylessConfig:
    """The keyless config in a connection's extra (flat form fields or the nested document).

    Raises ConfigError naming the field at fault (``source.client_secret``, ``target.aws.
    role_arn``, ``source_type`` ...); the message never contains a value.
    """
    values = _normalise(extra)
    flat = sorted(name for name in values if name in FLAT_SOURCE_FIELDS or name == "source_type")
    document: dict[str, Any] = {}
    if "source" in values:
        if flat:
            raise ConfigError(f"{where}: give the source either as `source` (JSON) or as flat "
                              f"fields, not both; fix: remove {', '.join(flat)} or `source`",
                              field=flat[0])
        document["source"] = _json_value("source", values.pop("source"), where)
    elif flat:
        source: dict[str, Any] = {"type": values.pop("source_type", "ambient")}
        for name in flat:
            if name in values:
                source[name] = values.pop(name)
        for name in ("subject", "actor", "tags", "command"):
            if name in source:
                source[name] = _json_value(name, source[name], where)
        document["source"] = source
    for name in (*NESTED_FIELDS, *[k for k in values if k not in NESTED_FIELDS]):
        if name in values and name not in TARGET_FIELDS:
            value = values[name]
            document[name] = _json_value(name, value, where) if name in NESTED_FIELDS else value
    target = fold_targets(document.get("target"), values, where)
    if target is None:
        raise ConfigError(f"{where}: no target; fix: fill a target's fields (AWS Role ARN, "
                          "GCP Workload Identity Provider, Azure Tenant Id and Client Id) or "
                          'the Target JSON, e.g. {"aws": {"role_arn": '
                          '"arn:aws:iam::123456789012:role/NAME"}}', field="target")
    document["target"] = target
    try:
        return load_config(document)
    except ConfigError as exc:
        raise _named_by_form(host_config_error(where, exc), values) from None


def _named_by_form(error: ConfigError, values: Mapping[str, Any]) -> ConfigError:
    """``error`` with the form field's label added when it is about a flat target field and
    that target was given by flat fields (the field path stays the config's:
    ``target.aws.role_arn``)."""
    clouds = {TARGET_FIELDS[name].cloud for name in values if name in TARGET_FIELDS}
    for name, field in TARGET_FIELDS.items():
        if field.cloud in clouds and error.field is not None and (
                error.field == field.path or error.field.startswith(f"{field.path}.")):
            return ConfigError(f"{error.message} (form field {field.label!r}, {name})",
                               field=error.field)
    return error
