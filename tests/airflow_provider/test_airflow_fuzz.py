"""Property-based: whatever a connection's extra holds (what a user pastes in the UI), the
provider answers with a config or a ConfigError, and the error never shows the secret."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from keyless import ConfigError
from keyless_airflow import config_from_extra
from keyless_airflow.fields import FLAT_SOURCE_FIELDS
from tests.support.fuzzing import json_values

SECRET = "s3cr3t-value-never-shown-42"
GOOD: dict[str, Any] = {
    "source_type": "client_credentials", "token_url": "https://idp.example.com/token",
    "client_id": "trainer", "client_secret": SECRET,
    "target": {"aws": {"role_arn": "arn:aws:iam::123456789012:role/trainer"}},
}
VALUES = json_values(SECRET)
KEYS = st.sampled_from(sorted({*FLAT_SOURCE_FIELDS, "source_type", "source", "target", "refresh",
                               "audit", "delivery", "allow_insecure_http",
                               "extra__keyless__client_id", "unknown"}))


@st.composite
def extras(draw: st.DrawFn) -> dict[str, Any]:
    extra = dict(GOOD)
    for _ in range(draw(st.integers(1, 4))):
        key = draw(KEYS)
        action = draw(st.sampled_from(["drop", "set", "json-text"]))
        if action == "drop":
            extra.pop(key, None)
        elif action == "set":
            extra[key] = draw(VALUES)
        else:
            extra[key] = json.dumps(draw(VALUES))
    return extra


@settings(max_examples=300, deadline=None)
@given(extra=extras())
def test_any_extra_gives_a_config_or_a_config_error(extra: dict[str, Any]) -> None:
    try:
        config_from_extra(extra, where="airflow connection 'fuzz'")
    except ConfigError as exc:
        assert SECRET not in str(exc) and SECRET not in repr(exc)
        assert str(exc).startswith("airflow connection 'fuzz'") or "config" in str(exc)
