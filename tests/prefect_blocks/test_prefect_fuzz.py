"""Property-based: whatever document a block is built from (the UI form, a JSON paste, code),
KeylessCredentials is built or refused with a ConfigError naming a field, never another
exception, and the refusal never shows the secret."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from keyless import ConfigError
from keyless.host import secret_fields
from prefect_keyless import KeylessCredentials
from tests.support.fuzzing import json_values, mutated

SECRET = "block-secret-never-shown-42"
GOOD: dict[str, Any] = {
    "source": {"type": "client_credentials", "token_url": "https://idp.example.com/token",
               "client_id": "trainer", "client_secret": SECRET},
    "target": {"aws": {"role_arn": "arn:aws:iam::123456789012:role/trainer"}},
}
VALUES = json_values(SECRET)
PATHS: list[tuple[str, ...]] = [
    ("source",), ("source", "type"), ("source", "client_secret"), ("source", "token_url"),
    ("source", "subject"), ("target",), ("target", "aws"), ("target", "aws", "role_arn"),
    ("target", "gcp"), ("refresh",), ("refresh", "at_fraction"), ("audit", "sinks"),
    ("allow_insecure_http",), ("unknown",)]


def _shown_elsewhere(node: Any, key: str = "") -> bool:
    """Whether SECRET stands in the document anywhere but a secret field (a token_url the fuzz
    set to it, say): a field that is not secret is shown, whatever its value."""
    if isinstance(node, dict):
        return any(_shown_elsewhere(v, str(k)) for k, v in node.items())
    if isinstance(node, list):
        return any(_shown_elsewhere(v, key) for v in node)
    return isinstance(node, str) and SECRET in node and key not in secret_fields()


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    return mutated(draw, GOOD, PATHS, VALUES)


@settings(max_examples=200, deadline=None)
@given(document=documents())
def test_any_document_gives_a_block_or_a_config_error(document: dict[str, Any]) -> None:
    try:
        block = KeylessCredentials(**document)
    except ConfigError as exc:
        assert SECRET not in str(exc) and SECRET not in repr(exc)
        assert exc.field
        return
    assert SECRET not in repr(block) or _shown_elsewhere(document)
