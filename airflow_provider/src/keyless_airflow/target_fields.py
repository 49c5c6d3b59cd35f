"""The connection form's flat target fields (``aws_role_arn``, ``gcp_audience``,
``azure_tenant_id`` ...) and how they fold into the config's ``target``.

Each flat field is one property of one target of the config schema (``aws_role_arn`` is
``target.aws.role_arn``), so a person types a role ARN or a tenant id into a labelled box
instead of writing JSON. The ``target`` JSON field stays for every other target property;
:func:`fold_targets` merges the two and refuses a property given both ways with different
values (:class:`~keyless.errors.ConfigError` naming the flat field, never a value).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keyless import ConfigError

__all__ = ["COMMON_TARGET_FIELDS", "MORE_TARGET_FIELDS", "TARGET_FIELDS", "TargetField",
           "fold_targets"]


@dataclass(frozen=True)
class TargetField:
    """One flat form field: ``target.<cloud>.<key>``, shown as ``label``."""

    cloud: str
    key: str
    label: str

    @property
    def path(self) -> str:
        return f"target.{self.cloud}.{self.key}"


#: The identifiers every user of a target types (the form's first section), in form order.
COMMON_TARGET_FIELDS: dict[str, TargetField] = {
    "aws_role_arn": TargetField("aws", "role_arn", "AWS Role ARN"),
    "aws_region": TargetField("aws", "region", "AWS Region"),
    "gcp_audience": TargetField("gcp", "audience", "GCP Workload Identity Provider"),
    "gcp_service_account": TargetField("gcp", "service_account", "GCP Service Account"),
    "gcp_project_id": TargetField("gcp", "project_id", "GCP Project Id"),
    "azure_tenant_id": TargetField("azure", "tenant_id", "Azure Tenant Id"),
    "azure_client_id": TargetField("azure", "client_id", "Azure Client Id"),
}
#: Settings some users change (the form's "More target settings" section).
MORE_TARGET_FIELDS: dict[str, TargetField] = {
    "aws_sts_endpoint_url": TargetField("aws", "sts_endpoint_url", "AWS STS Endpoint URL"),
    "aws_duration_seconds": TargetField("aws", "duration_seconds", "AWS Duration Seconds"),
    "aws_session_name": TargetField("aws", "session_name", "AWS Session Name"),
    "gcp_token_lifetime_seconds": TargetField("gcp", "token_lifetime_seconds",
                                              "GCP Token Lifetime Seconds"),
    "gcp_token_url": TargetField("gcp", "token_url", "GCP STS Token URL"),
    "azure_authority_host": TargetField("azure", "authority_host", "Azure Authority Host"),
}
#: Every flat target field, by form field name (a contract: add, never rename).
TARGET_FIELDS: dict[str, TargetField] = {**COMMON_TARGET_FIELDS, **MORE_TARGET_FIELDS}


def fold_targets(target: Any, values: Mapping[str, Any], where: str) -> Any:
    """``target`` (the JSON field's value, or None) with the flat target fields in ``values``
    merged in. A target given only by flat fields is created; a property given in both with
    different values raises ConfigError naming the flat field. A ``target`` that is not a JSON
    object is returned as is (the config's own check names it)."""
    given = {name: values[name] for name in TARGET_FIELDS if name in values}
    if not given:
        return target
    if target is None:
        target = {}
    if not isinstance(target, dict) or any(
            not isinstance(target.get(TARGET_FIELDS[name].cloud, {}), dict) for name in given):
        return target
    merged = {cloud: dict(spec) if isinstance(spec, dict) else spec
              for cloud, spec in target.items()}
    for name, value in given.items():
        field = TARGET_FIELDS[name]
        spec = merged.setdefault(field.cloud, {})
        if field.key in spec and spec[field.key] != value:
            raise ConfigError(
                f"{where}: {field.path} is given twice, as the {field.label} field "
                f"({name}) and in the Target JSON, with different values; fix: remove one",
                field=name)
        spec[field.key] = value
    return merged
