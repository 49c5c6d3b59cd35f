"""Airflow 3.3 discovers the provider: `airflow providers list` / `providers hooks`, and the UI
metadata service (what GET /ui/connections/hook_meta returns) shows the keyless form."""

from __future__ import annotations

import json
from pathlib import Path

from tests.airflow_provider.conftest import airflow_cli


def test_providers_list_and_hooks_show_the_provider(airflow_home: Path) -> None:
    listed = airflow_cli("providers", "list", "--output", "json")
    assert listed.returncode == 0, listed.stderr[-3000:]
    providers = {p["package_name"]: p for p in json.loads(listed.stdout)}
    assert "airflow-provider-keyless" in providers
    assert providers["airflow-provider-keyless"]["version"] == "0.1.0"

    hooks = airflow_cli("providers", "hooks", "--output", "json")
    assert hooks.returncode == 0, hooks.stderr[-3000:]
    by_type = {h["connection_type"]: h for h in json.loads(hooks.stdout)}
    assert by_type["keyless"]["class"] == "keyless_airflow.hooks.KeylessHook"
    assert by_type["keyless"]["package_name"] == "airflow-provider-keyless"
    assert by_type["keyless"]["conn_id_attribute_name"] == "keyless_conn_id"
    assert by_type["keyless"]["hook_name"] == "OIDC workload identity (keyless)"
    assert "Coherence check failed" not in hooks.stderr


def test_hook_meta_service_returns_the_keyless_form(airflow_home: Path) -> None:
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    meta = {m.connection_type: m for m in HookMetaService.hook_meta_data()}
    keyless = meta["keyless"]
    assert keyless.hook_name == "OIDC workload identity (keyless)"
    assert keyless.hook_class_name == "keyless_airflow.hooks.KeylessHook"
    standard = keyless.standard_fields
    assert standard is not None
    for name in ("host", "port", "login", "password", "url_schema"):
        field = getattr(standard, name)
        assert field is not None and field.hidden, name
    extra = keyless.extra_fields or {}
    assert extra["source_type"]["schema"]["enum"][0] == "file"
    assert extra["client_secret"]["schema"]["format"] == "password"
    assert extra["client_secret"]["schema"]["title"] == "Client Secret"
    assert extra["target"]["schema"]["type"] == ["object", "null"]
    assert "client_credentials" in extra["client_id"]["description"]
