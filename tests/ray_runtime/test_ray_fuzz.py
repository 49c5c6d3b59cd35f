"""Property-based: whatever ``runtime_env["keyless"]`` holds (what a user writes in a job's
runtime env, a JSON file or a KubeRay manifest), the plugin accepts it or refuses it with a
ConfigError, never another exception; the refusal never shows a secret (Ray prints runtime-env
errors in the driver, the agent log and the dashboard); ``get_uris`` (run for every runtime env
on the node) never raises and agrees with ``validate``."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from keyless import ConfigError
from keyless_ray import KeylessPlugin
from tests.support.fuzzing import json_values, mutated

SECRET = "runtime-env-secret-never-shown-42"
GOOD: dict[str, Any] = {
    "source": {"type": "file", "path": "/var/run/secrets/tokens/ray"},
    "target": {"aws": {"role_arn": "arn:aws:iam::123456789012:role/trainer",
                       "session_policy": {"Version": "2012-10-17", "Statement": [{
                           "Effect": "Allow", "Action": "s3:GetObject",
                           "Resource": "arn:aws:s3:::shards/{rank}/*"}]}}},
}
VALUES = json_values(SECRET)
PATHS: list[tuple[str, ...]] = [
    ("source",), ("source", "type"), ("source", "path"), ("source", "client_secret"),
    ("source", "token_url"), ("source", "subject"), ("source", "subject", "client_secret"),
    ("source", "private_key"), ("target",), ("target", "aws"), ("target", "aws", "role_arn"),
    ("target", "aws", "session_policy"), ("target", "aws", "session_name"), ("target", "gcp"),
    ("refresh",), ("refresh", "at_fraction"), ("audit", "sinks"), ("delivery",),
    ("allow_insecure_http",), ("unknown",)]


@st.composite
def runtime_env_values(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:  # now and then not a mapping at all
        return draw(VALUES)
    return mutated(draw, GOOD, PATHS, VALUES)


@settings(max_examples=300, deadline=None)
@given(value=runtime_env_values())
def test_any_runtime_env_value_is_accepted_or_refused_with_a_config_error(value: Any) -> None:
    runtime_env = {"keyless": value, "env_vars": {"A": "1"}}
    plugin = KeylessPlugin()
    uris = plugin.get_uris(runtime_env)
    try:
        KeylessPlugin.validate(runtime_env)
    except ConfigError as exc:
        text = f"{exc}\n{exc!r}\n{exc.field}"
        assert SECRET not in text
        assert str(exc).startswith("ray-keyless: ")
        assert exc.field or "must be a mapping" in str(exc)  # names the field at fault
        assert uris == []
        return
    if value is None:  # no keyless value: not ours
        assert uris == []
        return
    assert len(uris) == 1 and uris[0].startswith("keyless://")
    assert plugin.get_uris(copy.deepcopy(runtime_env)) == uris  # a stable id per config


def test_a_runtime_env_without_keyless_is_left_alone() -> None:
    plugin = KeylessPlugin()
    KeylessPlugin.validate({"env_vars": {"A": "1"}})
    assert plugin.get_uris({"env_vars": {"A": "1"}}) == []
    assert plugin.get_uris(None) == []
