"""The connection form generated from the config schema, and reading a connection's extra back
(no servers: pure functions of keyless.config_json_schema())."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from keyless import ConfigError
from keyless_airflow import config_from_extra, conn_fields, get_provider_info
from keyless_airflow.fields import FLAT_SOURCE_FIELDS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "airflow"

GOOD = {
    "source_type": "client_credentials", "token_url": "https://idp.example.com/token",
    "client_id": "trainer", "client_secret": "s3cr3t-value-123",
    "target": {"aws": {"role_arn": "arn:aws:iam::123456789012:role/trainer"}},
}


def test_provider_info_validates_against_airflows_runtime_schema() -> None:
    schema = json.loads(resources.files("airflow").joinpath("provider_info.schema.json")
                        .read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    assert info["package-name"] == "airflow-provider-keyless"
    (conn_type,) = info["connection-types"]
    assert conn_type["connection-type"] == "keyless"
    assert conn_type["hook-class-name"] == "keyless_airflow.hooks.KeylessHook"
    behaviour = conn_type["ui-field-behaviour"]
    behaviour_schema = json.loads(resources.files("airflow").joinpath(
        "customized_form_field_behaviours.schema.json").read_text())
    jsonschema.validate({"hidden_fields": behaviour["hidden-fields"],
                         "relabeling": behaviour["relabeling"]}, behaviour_schema)
    assert set(behaviour["hidden-fields"]) == {"host", "port", "login", "schema", "password"}


def test_enums_are_dropdowns_secrets_passwords_nested_parts_json() -> None:
    fields = conn_fields()
    assert "client_credentials" in fields["source_type"]["schema"]["enum"]
    assert "token_exchange" in fields["source_type"]["schema"]["enum"]
    assert fields["auth_method"]["schema"]["enum"] == [
        "client_secret_basic", "client_secret_post", "private_key_jwt"]
    # shared by two source types with different choices: one dropdown with both sets
    assert {"RS256", "PS256", "ES384"} <= set(fields["signing_algorithm"]["schema"]["enum"])
    for secret in ("client_secret", "private_key"):
        assert fields[secret]["schema"]["format"] == "password"
    secrets = {name for name, f in fields.items() if f["schema"].get("format") == "password"}
    assert secrets == {"client_secret", "private_key"}
    for nested in ("target", "refresh", "audit", "delivery", "subject", "actor", "tags"):
        assert fields[nested]["schema"]["type"] == ["object", "null"], nested
    assert fields["allow_insecure_http"]["schema"]["type"] == ["boolean", "null"]
    assert fields["timeout_seconds"]["schema"]["type"] == ["number", "null"]
    assert "client_credentials" in fields["client_id"]["description"]
    # no source field carries a UI default: a form must not save values another type rejects
    assert all("default" not in fields[name]["schema"] for name in FLAT_SOURCE_FIELDS)


def test_the_form_covers_every_source_field_of_the_schema() -> None:
    from keyless import config_json_schema

    schema = config_json_schema()
    for ref in schema["properties"]["source"]["discriminator"]["mapping"].values():
        variant = schema["$defs"][ref.rsplit("/", 1)[1]]
        assert set(variant["properties"]) - {"type"} <= set(conn_fields()), ref


def test_secret_field_names_are_caught_by_airflows_masker() -> None:
    from airflow.sdk._shared.secrets_masker import should_hide_value_for_key

    assert should_hide_value_for_key("client_secret")
    assert should_hide_value_for_key("private_key")
    assert not should_hide_value_for_key("client_id")


def test_flat_form_values_give_the_config() -> None:
    config = config_from_extra({**GOOD, "scope": "", "issuer": None,
                                "refresh": '{"at_fraction": 0.4}'})
    assert config.source.type == "client_credentials"
    assert config.source.client_secret is not None  # type: ignore[union-attr]
    assert config.source.client_secret.get_secret_value() == "s3cr3t-value-123"  # type: ignore[union-attr]
    assert config.refresh.at_fraction == 0.4
    assert config.target.aws is not None


def test_nested_document_and_airflow2_prefixed_keys_give_the_same_config() -> None:
    nested = {"source": {"type": "client_credentials", "token_url": GOOD["token_url"],
                         "client_id": "trainer", "client_secret": GOOD["client_secret"]},
              "target": json.dumps(GOOD["target"])}
    prefixed = {f"extra__keyless__{k}": v for k, v in GOOD.items()}
    flat = config_from_extra(GOOD)
    assert config_from_extra(nested) == flat
    assert config_from_extra(prefixed) == flat


@pytest.mark.parametrize(("extra", "field"), [
    ({**GOOD, "client_secret": None}, "source.client_secret"),
    ({**GOOD, "target": {"aws": {"role_arn": "not-an-arn"}}}, "target.aws.role_arn"),
    ({**GOOD, "path": "/var/run/token"}, "source.path"),
    ({**GOOD, "source_type": "carrier_pigeon"}, "source.type"),
    ({k: v for k, v in GOOD.items() if k != "target"}, "target"),
    ({**GOOD, "target": "{not json"}, "target"),
    ({**GOOD, "source": {"type": "ambient"}}, "client_id"),
    ({**GOOD, "token_url": "http://idp.example.com/token"}, "source.token_url"),
])
def test_an_invalid_extra_is_refused_naming_the_field(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_extra(extra, where="airflow connection 'kl'")
    assert info.value.field == field
    assert str(info.value).startswith("airflow connection 'kl': ")
    assert "s3cr3t-value-123" not in str(info.value)


def test_the_example_connections_parse() -> None:
    connections = json.loads((EXAMPLES / "connections.json").read_text())
    config = config_from_extra(connections["keyless_default"]["extra"])
    assert config.source.type == "client_credentials"
    assert connections["aws_keyless"]["extra"]["keyless_conn_id"] == "keyless_default"


# ------------------------------------------------------------- issue 21: a form a person fills
ROLE = "arn:aws:iam::123456789012:role/trainer"
WIP = "//iam.googleapis.com/projects/42/locations/global/workloadIdentityPools/p/providers/q"
#: The four common cases as the form saves them: every field present, the unused ones null.
COMMON_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "file+aws": ({"source_type": "file", "path": "/var/run/secrets/tokens/oidc",
                  "aws_role_arn": ROLE, "aws_region": "eu-west-1"},
                 {"source": {"type": "file", "path": "/var/run/secrets/tokens/oidc"},
                  "target": {"aws": {"role_arn": ROLE, "region": "eu-west-1"}}}),
    "client_credentials+aws": ({**{k: v for k, v in GOOD.items() if k != "target"},
                                "aws_role_arn": ROLE},
                               {"source": {"type": "client_credentials",
                                           "token_url": GOOD["token_url"], "client_id": "trainer",
                                           "client_secret": GOOD["client_secret"]},
                                "target": {"aws": {"role_arn": ROLE}}}),
    "ambient+gcp": ({"source_type": "ambient", "gcp_audience": WIP,
                     "gcp_service_account": "trainer@p.iam.gserviceaccount.com",
                     "gcp_project_id": "p"},
                    {"source": {"type": "ambient"},
                     "target": {"gcp": {"audience": WIP, "project_id": "p",
                                        "service_account": "trainer@p.iam.gserviceaccount.com"}}}),
    "file+azure": ({"source_type": "file", "path": "/var/run/secrets/azure/tokens/token",
                    "azure_tenant_id": "tenant-1", "azure_client_id": "client-1"},
                   {"source": {"type": "file", "path": "/var/run/secrets/azure/tokens/token"},
                    "target": {"azure": {"tenant_id": "tenant-1", "client_id": "client-1"}}}),
}


def _as_saved(flat: dict[str, Any]) -> dict[str, Any]:
    """What the UI saves: every form field, null where nothing was typed."""
    return {name: flat.get(name) for name in conn_fields()} | flat


def test_the_form_puts_the_source_type_common_fields_and_target_ids_first() -> None:
    from keyless_airflow.fields import COMMON_SOURCE_FIELDS, SECTIONS
    from keyless_airflow.target_fields import COMMON_TARGET_FIELDS

    fields = conn_fields()
    first = [name for name, f in fields.items() if "section" not in f["schema"]]
    assert first == ["source_type", *COMMON_SOURCE_FIELDS, *COMMON_TARGET_FIELDS]
    sections = list(dict.fromkeys(f["schema"]["section"] for f in fields.values()
                                  if "section" in f["schema"]))
    assert sections == list(SECTIONS)  # sections in form order, each one contiguous
    assert [f["schema"].get("section") for f in fields.values()] == sorted(
        (f["schema"].get("section") for f in fields.values()),
        key=lambda s: -1 if s is None else SECTIONS.index(s))
    shown = fields["source_type"]["schema"]["values_display"]
    assert set(shown) == set(fields["source_type"]["schema"]["enum"])
    assert shown["file"].startswith("file: ") and "Kubernetes" in shown["file"]
    assert fields["aws_role_arn"]["label"] == "AWS Role ARN"
    assert "target.aws.role_arn" in fields["aws_role_arn"]["description"]
    assert "Only for source type file." in fields["path"]["description"]
    for name in (*COMMON_TARGET_FIELDS, "aws_sts_endpoint_url", "aws_duration_seconds"):
        assert "default" not in fields[name]["schema"], name
    assert fields["aws_duration_seconds"]["schema"]["type"] == ["integer", "null"]


def test_every_target_property_is_a_flat_field_or_in_the_target_json() -> None:
    from keyless import config_json_schema
    from keyless_airflow.target_fields import TARGET_FIELDS

    schema = config_json_schema()
    for name, field in TARGET_FIELDS.items():
        ref = f"{field.cloud.capitalize()}Target"
        assert field.key in schema["$defs"][ref]["properties"], name
        assert name not in FLAT_SOURCE_FIELDS and name in conn_fields(), name
    assert set(schema["properties"]) - {"source"} <= set(conn_fields())


@pytest.mark.parametrize("case", sorted(COMMON_CASES))
def test_each_common_case_is_typed_fields_only(case: str) -> None:
    from keyless import load_config

    flat, document = COMMON_CASES[case]
    assert not any(isinstance(v, (dict, list)) for v in flat.values())  # no JSON typed
    assert config_from_extra(_as_saved(flat)) == load_config(document)


def test_flat_target_fields_merge_into_the_target_json() -> None:
    extra = {**_as_saved(COMMON_CASES["file+aws"][0]), "aws_sts_endpoint_url":
             "https://sts.eu-west-1.amazonaws.com", "aws_duration_seconds": 900,
             "target": {"aws": {"policy_arns": ["arn:aws:iam::aws:policy/ReadOnlyAccess"]},
                        "azure": {"tenant_id": "t", "client_id": "c"}}}
    config = config_from_extra(extra)
    assert config.target.aws is not None and config.target.azure is not None
    assert config.target.aws.role_arn == ROLE and config.target.aws.duration_seconds == 900
    assert config.target.aws.policy_arns == ["arn:aws:iam::aws:policy/ReadOnlyAccess"]
    assert config.target.aws.sts_endpoint_url == "https://sts.eu-west-1.amazonaws.com"
    # the same value both ways is one value; different values are refused, naming the field
    same = {**extra, "target": {"aws": {"role_arn": ROLE}}}
    assert config_from_extra(same).target.aws == config_from_extra(
        {**extra, "target": None}).target.aws
    with pytest.raises(ConfigError) as info:
        config_from_extra({**extra, "target": {"aws": {"role_arn": ROLE + "2"}}})
    assert info.value.field == "aws_role_arn" and ROLE not in str(info.value)


@pytest.mark.parametrize(("flat", "field", "label"), [
    ({"aws_role_arn": "not-an-arn"}, "target.aws.role_arn", "AWS Role ARN"),
    ({"azure_tenant_id": "t"}, "target.azure.client_id", "Azure Client Id"),
    ({"gcp_service_account": "sa@p.iam.gserviceaccount.com"}, "target.gcp.audience",
     "GCP Workload Identity Provider"),
])
def test_a_bad_flat_target_field_is_named_with_its_form_label(
        flat: dict[str, Any], field: str, label: str) -> None:
    extra = _as_saved({"source_type": "file", "path": "/t", **flat})
    with pytest.raises(ConfigError) as info:
        config_from_extra(extra, where="airflow connection 'kl'")
    assert info.value.field == field
    assert f"form field {label!r}" in str(info.value)
    assert "not-an-arn" not in str(info.value)
