"""KeylessHook outside a task (as the UI's "Test connection" and a worker's first call use it):
test_connection() against the reference IdP and the verifying STS front, refusal of an invalid
connection at construction, and no secret in the hook's repr or the connection's rendered
extra. Issue 5, point 5."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from keyless import ConfigError
from tests.airflow_provider.conftest import flat_extra
from tests.e2e.conftest import Federation, LeakGuard

pytestmark = pytest.mark.e2e


def _connection(monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any]) -> str:
    conn_id = f"kl_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}",
                       json.dumps({"conn_type": "keyless", "extra": extra}))
    return conn_id


def test_test_connection_is_true_for_a_good_config(
        airflow_home: Path, federation: Federation, monkeypatch: pytest.MonkeyPatch,
        leak_guard: LeakGuard) -> None:
    from keyless_airflow import KeylessHook

    hook = KeylessHook(_connection(monkeypatch, flat_extra(federation.config())))
    ok, message = hook.test_connection()
    assert ok, message
    assert "signature" in message and "exchange" in message
    assert federation.aws.front.accepted, "test_connection did not dry-run the exchange"
    leak_guard.add(message, repr(hook), str(hook.config), repr(hook.config))


def test_test_connection_names_the_claim_for_a_wrong_audience(
        airflow_home: Path, federation: Federation, monkeypatch: pytest.MonkeyPatch,
        leak_guard: LeakGuard) -> None:
    from keyless_airflow import KeylessHook

    config = federation.config(audience="https://other.example")
    hook = KeylessHook(_connection(monkeypatch, flat_extra(config)))
    ok, message = hook.test_connection()
    assert not ok
    assert message.startswith("keyless: aud: ")
    assert "https://other.example" in message and "sts.amazonaws.com" in message
    assert "exchange:" in message and "fix" in message
    assert federation.aws.front.accepted == []
    leak_guard.add(message)


def test_an_invalid_connection_is_refused_at_construction_naming_the_field(
        airflow_home: Path, federation: Federation, monkeypatch: pytest.MonkeyPatch,
        leak_guard: LeakGuard) -> None:
    from keyless_airflow import KeylessHook

    extra = flat_extra(federation.config())
    extra["target"] = {"aws": {"role_arn": "arn:aws:iam::12:role/x"}}
    conn_id = _connection(monkeypatch, extra)
    with pytest.raises(ConfigError) as info:
        KeylessHook(conn_id)
    assert info.value.field == "target.aws.role_arn"
    assert str(info.value).startswith(f"airflow connection {conn_id!r}: ")
    leak_guard.add(str(info.value), repr(info.value))


def test_no_secret_in_the_hook_repr_or_the_rendered_extra(
        airflow_home: Path, federation: Federation, monkeypatch: pytest.MonkeyPatch,
        leak_guard: LeakGuard) -> None:
    from airflow.api_fastapi.core_api.datamodels.connections import ConnectionResponse
    from airflow.models.connection import Connection

    from keyless_airflow import KeylessHook

    config = federation.config()
    secret = config["source"]["client_secret"]
    extra = flat_extra(config)
    hook = KeylessHook(_connection(monkeypatch, extra))
    assert repr(hook).startswith("KeylessHook(conn_id='kl_")
    token = hook.get_token()
    leak_guard.forbid(token)

    # what the REST API / UI shows for the stored connection
    stored = Connection(conn_id="kl_render", conn_type="keyless", extra=json.dumps(extra))
    rendered = ConnectionResponse.model_validate(stored, from_attributes=True)
    shown = json.loads(rendered.extra or "{}")
    assert shown["client_secret"] == "***" and shown["client_id"] == "trainer"
    # the nested form (a whole config document in the extra) is masked as well
    nested = Connection(conn_id="kl_nested", conn_type="keyless", extra=json.dumps(config))
    nested_shown = ConnectionResponse.model_validate(nested, from_attributes=True).extra or ""
    assert json.loads(nested_shown)["source"]["client_secret"] == "***"

    # the Task SDK registered the extra's secret with the log masker when it read it
    from airflow.sdk._shared.secrets_masker import redact

    assert secret not in str(redact(f"client secret is {secret}"))
    leak_guard.add(repr(hook), rendered.model_dump_json(), nested_shown, str(hook.config))


def test_every_provider_adapter_shares_one_hook_registry() -> None:
    """S3Hook (session factory, also deferrable), GCSHook and WasbHook adapters take a task's
    keyless hook from one registry, so one task using several providers on one keyless
    connection builds one pipeline."""
    from keyless_airflow import aws, aws_async, azure, google, registry

    for module in (aws, aws_async, azure, google):
        assert module.keyless_hook_for is registry.keyless_hook_for, module.__name__
