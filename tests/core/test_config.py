"""keyless.config: every source and target loads from every form; bad configs name the field."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from keyless.config import (
    AwsTarget,
    ClientCredentialsSource,
    KeylessConfig,
    TokenExchangeSource,
    config_json_schema,
    load_config,
)
from keyless.errors import ConfigError

SECRET = "s3cr3t-SENTINEL-do-not-print"
PEM = "-----BEGIN PRIVATE KEY-----\nPEM-SENTINEL-do-not-print\n-----END PRIVATE KEY-----\n"
ROLE = "arn:aws:iam::123456789012:role/trainer"

SOURCES: dict[str, dict[str, Any]] = {
    "file": {"type": "file", "path": "/var/run/secrets/tokens/oidc",
             "audience": "sts.amazonaws.com"},
    "env": {"type": "env", "variable": "MY_TOKEN"},
    "github_actions": {"type": "github_actions", "audience": "sts.amazonaws.com"},
    "gitlab": {"type": "gitlab", "variable": "AWS_ID_TOKEN"},
    "gcp_metadata": {"type": "gcp_metadata", "audience": "https://x.example"},
    "client_credentials_secret": {
        "type": "client_credentials", "token_url": "https://idp.example/token",
        "client_id": "trainer", "client_secret": SECRET, "scope": "openid",
        "resource": "https://sts.example"},
    "client_credentials_key": {
        "type": "client_credentials", "issuer": "https://idp.example", "client_id": "trainer",
        "private_key": PEM, "key_id": "k1", "signing_algorithm": "ES256"},
    "token_exchange": {
        "type": "token_exchange", "token_url": "https://idp.example/token",
        "audience": "https://sts.example", "scope": "s3",
        "subject": {"type": "file", "path": "/t"},
        "actor": {"type": "env", "variable": "ACTOR_TOKEN"},
        "client_id": "x", "client_secret": SECRET},
    "command": {"type": "command", "command": ["get-token", "--json"], "timeout_seconds": 5},
    "ambient": {"type": "ambient"},
}

TARGETS: dict[str, dict[str, Any]] = {
    "aws": {"role_arn": ROLE, "region": "eu-west-1", "duration_seconds": 900,
            "session_name": "kl-{job_id}-{rank}",
            "session_policy": {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "s3:GetObject",
                 "Resource": "arn:aws:s3:::bucket/shards/{rank}/*"}]},
            "policy_arns": ["arn:aws:iam::aws:policy/ReadOnlyAccess"],
            "tags": {"rank": "{rank}", "job": "{job_id}"},
            "sts_endpoint_url": "https://sts.eu-west-1.amazonaws.com"},
    "gcp": {"audience": "//iam.googleapis.com/projects/1/locations/global/"
                        "workloadIdentityPools/p/providers/q",
            "service_account": "sa@p.iam.gserviceaccount.com", "token_lifetime_seconds": 600,
            "scopes": ["https://www.googleapis.com/auth/devstorage.read_only"],
            "access_boundary": {"accessBoundary": {"accessBoundaryRules": []}},
            "token_url": "https://sts.googleapis.com/v1/token",
            "impersonation_url": "https://iamcredentials.googleapis.com/v1/x"},
    "azure": {"tenant_id": "t", "client_id": "c",
              "authority_host": "https://login.microsoftonline.com"},
    "databricks": {"host": "https://dbc-1.cloud.databricks.com", "client_id": "sp"},
    "huggingface": {"resource": "org/model", "token_url": "https://huggingface.co/oauth/token"},
    "oauth2": {"token_url": "https://sts.example/token", "audience": "a", "resource": "r",
               "scope": "s"},
}


def doc(source: dict[str, Any] | None = None, **targets: dict[str, Any]) -> dict[str, Any]:
    return {"source": copy.deepcopy(source or SOURCES["file"]),
            "target": copy.deepcopy(targets or {"aws": {"role_arn": ROLE}})}


def all_good_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, source in SOURCES.items():
        yield f"source-{name}", doc(source)
    for name, target in TARGETS.items():
        yield f"target-{name}", doc(**{name: target})
    yield "everything", {**doc(SOURCES["client_credentials_secret"], **TARGETS),
                         "refresh": {"at_fraction": 0.6, "jitter_fraction": 0.2,
                                     "max_backoff_seconds": 30},
                         "audit": {"sinks": ["log", "jsonl"], "jsonl_path": "/tmp/a.jsonl"},
                         "allow_insecure_http": False}


GOOD = dict(all_good_documents())


def as_dict(d: dict[str, Any], tmp: Path) -> Any:
    return d


def as_json_string(d: dict[str, Any], tmp: Path) -> Any:
    return json.dumps(d)


def as_yaml_string(d: dict[str, Any], tmp: Path) -> Any:
    return yaml.safe_dump(d)


def as_yaml_file(d: dict[str, Any], tmp: Path) -> Any:
    path = tmp / "keyless.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def as_json_file_str(d: dict[str, Any], tmp: Path) -> Any:
    path = tmp / "keyless.json"
    path.write_text(json.dumps(d, indent=2))
    return str(path)


FORMS: list[Callable[[dict[str, Any], Path], Any]] = [
    as_dict, as_json_string, as_yaml_string, as_yaml_file, as_json_file_str]


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", list(GOOD))
def test_every_source_and_target_loads_from_every_form(
        name: str, form: Callable[[dict[str, Any], Path], Any], tmp_path: Path) -> None:
    document = GOOD[name]
    config = load_config(form(document, tmp_path))
    assert isinstance(config, KeylessConfig)
    assert config == KeylessConfig.model_validate(document)
    assert load_config(config) is config


def test_loaded_values() -> None:
    config = load_config(GOOD["everything"])
    assert isinstance(config.source, ClientCredentialsSource)
    assert config.source.client_secret is not None
    assert config.source.client_secret.get_secret_value() == SECRET
    assert isinstance(config.target.aws, AwsTarget) and config.target.aws.duration_seconds == 900
    assert config.target.gcp is not None and config.target.oauth2 is not None
    assert config.refresh.at_fraction == 0.6 and config.audit.jsonl_path == "/tmp/a.jsonl"
    nested = load_config(GOOD["source-token_exchange"]).source
    assert isinstance(nested, TokenExchangeSource) and nested.actor is not None
    assert nested.subject.type == "file" and nested.actor.type == "env"


def test_defaults() -> None:
    config = load_config({"target": {"aws": {"role_arn": ROLE}}})
    assert config.source.type == "ambient"
    assert config.audit.sinks == ["log"] and config.allow_insecure_http is False
    assert config.target.aws is not None and config.target.aws.duration_seconds == 3600


# ----------------------------------------------------------------------------- bad configs

def with_source(**source: Any) -> dict[str, Any]:
    return doc(source)


def with_aws(**aws: Any) -> dict[str, Any]:
    return doc(aws={"role_arn": ROLE, **aws})


def cc(token_url: str, **more: Any) -> dict[str, Any]:
    return {"type": "client_credentials", "token_url": token_url, "client_id": "c",
            "client_secret": SECRET, **more}


BAD: list[tuple[str, dict[str, Any], str, list[str]]] = [
    # (id, document, field, fragments the message must contain)
    ("unknown source type", with_source(type="kerberos"), "source.type",
     ["unknown source type", "file", "client_credentials", "ambient"]),
    ("missing source type", with_source(path="/x"), "source.type", ["`type`", "file"]),
    ("unknown extra field", with_source(type="file", path="/x", pathh="/y"), "source.pathh",
     ["unknown field", "remove it", "keyless schema"]),
    ("unknown top-level field", {**doc(), "refesh": {}}, "refesh", ["unknown field"]),
    ("unknown target", doc(aws_s3={"x": 1}), "target.aws_s3", ["unknown field"]),
    ("role_arn malformed", with_aws(role_arn="arn:aws:iam::12:role/x"), "target.aws.role_arn",
     ["arn:aws:iam::123456789012:role/NAME"]),
    ("role_arn not a role", with_aws(role_arn="arn:aws:iam::123456789012:user/x"),
     "target.aws.role_arn", ["role/NAME"]),
    ("duration too short", with_aws(duration_seconds=899), "target.aws.duration_seconds",
     ["900"]),
    ("duration too long", with_aws(duration_seconds=43201), "target.aws.duration_seconds",
     ["43200"]),
    ("policy arn malformed", with_aws(policy_arns=["arn:aws:iam::aws:policy/A", "nope"]),
     "target.aws.policy_arns.1", ["policy/NAME"]),
    ("http to a remote host, even when allowed",
     {**doc(cc("http://idp.example/token")), "allow_insecure_http": True}, "source.token_url",
     ["http://idp.example", "loopback", "https://"]),
    ("http to loopback without the flag", doc(cc("http://127.0.0.1:8080/token")),
     "source.token_url", ["loopback", "allow_insecure_http"]),
    ("http localhost without the flag", doc(cc("http://localhost:8080/token")),
     "source.token_url", ["allow_insecure_http"]),
    ("ftp url", doc(oauth2={"token_url": "ftp://x/t"}), "target.oauth2.token_url",
     ["https://"]),
    ("http sts endpoint", with_aws(sts_endpoint_url="http://sts.example"),
     "target.aws.sts_endpoint_url", ["loopback"]),
    ("unknown placeholder in session_name", with_aws(session_name="kl-{shard}"),
     "target.aws.session_name", ["{shard}", "{rank}", "{job_id}"]),
    ("format spec in session_name", with_aws(session_name="kl-{rank:>4}"),
     "target.aws.session_name", ["{rank}"]),
    ("unknown placeholder in session_policy",
     with_aws(session_policy={"Statement": [{"Resource": "arn:aws:s3:::b/{shard}/*"}]}),
     "target.aws.session_policy.Statement.0.Resource", ["{shard}", "{rank}"]),
    ("unknown placeholder in a string session_policy",
     with_aws(session_policy='{"Statement": [{"Resource": "{worker}"}]}'),
     "target.aws.session_policy.Statement.0.Resource", ["{worker}"]),
    ("unknown placeholder in tags", with_aws(tags={"rank": "{ranky}"}), "target.aws.tags.rank",
     ["{ranky}", "{rank}"]),
    ("client_credentials without secret or key",
     with_source(type="client_credentials", token_url="https://i/t", client_id="c"),
     "source.client_secret", ["client_secret", "private_key"]),
    ("client_credentials without endpoint",
     with_source(type="client_credentials", client_id="c", client_secret=SECRET),
     "source.token_url", ["token_url", "issuer"]),
    ("private_key_jwt without key",
     with_source(type="client_credentials", token_url="https://i/t", client_id="c",
                 client_secret=SECRET, auth_method="private_key_jwt"),
     "source.private_key", ["private_key"]),
    ("nested subject misconfigured",
     with_source(type="token_exchange", token_url="https://i/t",
                 subject={"type": "client_credentials", "token_url": "https://i/t",
                          "client_id": "c"}),
     "source.subject.client_secret", ["client_secret"]),
    ("jsonl sink without a path", {**doc(), "audit": {"sinks": ["jsonl"]}}, "audit.jsonl_path",
     ["jsonl_path"]),
    ("unknown sink", {**doc(), "audit": {"sinks": ["otlp"]}}, "audit.sinks.0", ["log"]),
    ("no target at all", {"source": SOURCES["file"], "target": {}}, "target",
     ["at least one target", "aws", "gcp"]),
    ("target missing", {"source": SOURCES["file"]}, "target",
     ["missing", "fix: add it", "keyless schema"]),
    ("refresh fraction out of range", {**doc(), "refresh": {"at_fraction": 1.5}},
     "refresh.at_fraction", ["1"]),
    ("wrong type", with_aws(duration_seconds="an hour"), "target.aws.duration_seconds",
     ["integer", "fix:", "keyless schema"]),
]


@pytest.mark.parametrize(("document", "field", "fragments"),
                         [pytest.param(d, f, m, id=i) for i, d, f, m in BAD])
def test_bad_config_names_the_field(document: dict[str, Any], field: str,
                                    fragments: list[str], tmp_path: Path) -> None:
    for form in (as_dict, as_yaml_string, as_json_file_str):
        with pytest.raises(ConfigError) as info:
            load_config(form(document, tmp_path))
        error = info.value
        assert error.field == field
        message = str(error)
        assert message.startswith("config: ")
        assert field in message
        for fragment in fragments:
            assert fragment in message
        assert SECRET not in message and "PEM-SENTINEL" not in message
        assert SECRET not in repr(error)


def test_http_loopback_accepted_with_the_flag() -> None:
    for url in ("http://127.0.0.1:8080/token", "http://localhost/t", "http://[::1]:9/t"):
        config = load_config({**doc(cc(url)), "allow_insecure_http": True})
        assert isinstance(config.source, ClientCredentialsSource)
        assert config.source.token_url == url


def test_http_lookalike_hosts_are_not_loopback() -> None:
    for url in ("http://127.0.0.1.nip.io/t", "http://localhost.example/t", "http://0.0.0.0/t"):
        with pytest.raises(ConfigError) as info:
            load_config({**doc(cc(url)), "allow_insecure_http": True})
        assert info.value.field == "source.token_url"


def test_url_userinfo_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(doc(cc(f"http://user:{SECRET}@idp.example/t")))
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "42", "null", "", "{", "a: [", "\t- x: :"])
def test_non_mapping_or_broken_documents(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(text)
    assert str(info.value).startswith("config: ")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


# ----------------------------------------------------------------------------- secrets

@pytest.mark.parametrize("name", ["client_credentials_secret", "client_credentials_key",
                                  "token_exchange"])
def test_secrets_never_in_repr_or_str(name: str) -> None:
    config = load_config(GOOD[f"source-{name}"])
    for text in (repr(config), str(config), repr(config.source), config.model_dump_json(),
                 str(config.model_dump())):
        assert SECRET not in text
        assert "PEM-SENTINEL" not in text


def test_secret_in_a_bad_config_is_not_in_the_error() -> None:
    bad = doc(cc("https://idp.example/t", scope=123, client_idd="x"))
    bad["source"]["private_key"] = PEM
    with pytest.raises(ConfigError) as info:
        load_config(yaml.safe_dump(bad))
    assert SECRET not in str(info.value) and "PEM-SENTINEL" not in str(info.value)
    wrong_type = doc(cc("https://idp.example/t"))
    wrong_type["source"]["client_secret"] = {"value": SECRET}
    with pytest.raises(ConfigError) as info:
        load_config(wrong_type)
    assert info.value.field == "source.client_secret"
    assert SECRET not in str(info.value)


# ----------------------------------------------------------------------------- JSON schema

def test_json_schema_is_valid_and_accepts_good_documents() -> None:
    schema = config_json_schema()
    json.dumps(schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for name, document in GOOD.items():
        errors = list(validator.iter_errors(document))
        assert not errors, (name, [e.message for e in errors])


def test_json_schema_rejects_what_the_model_rejects() -> None:
    validator = jsonschema.Draft202012Validator(config_json_schema())
    for document in (with_source(type="file", path="/x", pathh="/y"),
                     with_aws(duration_seconds=10), {"source": SOURCES["file"]}):
        assert list(validator.iter_errors(document))


def _secret_properties(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.get("properties", {}).items():
            if key in ("client_secret", "private_key"):
                yield key, value
        for value in node.values():
            yield from _secret_properties(value)
    elif isinstance(node, list):
        for value in node:
            yield from _secret_properties(value)


def test_json_schema_marks_secret_fields() -> None:
    found = list(_secret_properties(config_json_schema()))
    assert {k for k, _ in found} == {"client_secret", "private_key"}
    assert len(found) >= 3  # client_credentials (2) + token_exchange (1)
    for _, prop in found:
        variants = [prop, *prop.get("anyOf", [])]
        assert any(v.get("format") == "password" and v.get("writeOnly") is True
                   for v in variants), prop
