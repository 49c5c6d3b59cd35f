"""KeylessPlugin and the node registry without a cluster: the agent's contract (get_uris never
raises, create idempotent and off the event loop, retries of transient IdP errors, the
refresher stopped by Ray's own URI cache once its last user is gone, only paths and ids in
env vars). Injected HTTP transport and sleep; no patched globals."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from ray._private.runtime_env.context import RuntimeEnvContext
from ray._private.runtime_env.uri_cache import URICache

from keyless import ConfigError, Keyless, KeylessConfig, SourceMisconfigured
from keyless.audit import redact
from keyless_ray import MANIFEST_VARIABLE, MARKER_VARIABLE, ray_schema
from keyless_ray.agent import NodeRegistry, config_id, parse_runtime_env_value
from keyless_ray.plugin import KeylessPlugin, cache_limit_bytes
from tests.core.helpers import Recorder, make_jwt
from tests.core.test_registry import CASES

ROLE = "arn:aws:iam::123456789012:role/trainer"
LOG = logging.getLogger("test.keyless_ray")


def file_config(tmp_path: Path, **aws: Any) -> dict[str, Any]:
    token = tmp_path / "sa-token"
    token.write_text(make_jwt(aud="sts.amazonaws.com"))
    return {"source": {"type": "file", "path": str(token)},
            "target": {"aws": {"role_arn": ROLE, "region": "us-east-1", **aws}}}


def _ident(uri: str) -> str:
    """The config id in a ``keyless://<id>.<generation>`` URI."""
    return uri.removeprefix("keyless://").partition(".")[0]


def plugin_for(registry: NodeRegistry | None = None) -> KeylessPlugin:
    return KeylessPlugin(registry if registry is not None else NodeRegistry(sleep=lambda _: None))


def test_get_uris_never_raises_and_is_stable(tmp_path: Path) -> None:
    plugin = plugin_for()
    for garbage in ({}, {"keyless": "nope"}, {"keyless": ["x"]}, {"keyless": {"target": {}}},
                    {"keyless": {"source": {"type": "client_credentials", "client_id": "c",
                                            "client_secret": "s", "token_url": "https://i"}}},
                    {"pip": ["x"]}, None, 42):
        assert plugin.get_uris(garbage) == []
    config = file_config(tmp_path)
    reordered = dict(reversed(list(config.items())))
    uris = plugin.get_uris({"keyless": config})
    assert uris == plugin.get_uris({"keyless": reordered})
    assert uris == ["keyless://" + config_id(parse_runtime_env_value(config)) + ".0"]


def test_validate_names_the_field_and_never_echoes_a_secret(tmp_path: Path) -> None:
    bad = file_config(tmp_path)
    bad["target"]["aws"]["role_arn"] = "not-an-arn"
    with pytest.raises(ConfigError) as info:
        KeylessPlugin.validate({"keyless": bad})
    assert info.value.field == "target.aws.role_arn"
    inline = {"source": {"type": "token_exchange", "token_url": "https://sts.example",
                         "subject": {"type": "client_credentials", "client_id": "c",
                                     "token_url": "https://idp.example",
                                     "client_secret": "very-secret-value"}},
              "target": {"aws": {"role_arn": ROLE}}}
    with pytest.raises(ConfigError) as info:
        KeylessPlugin.validate({"keyless": inline})
    assert info.value.field == "source.subject.client_secret"
    assert "very-secret-value" not in str(info.value)
    KeylessPlugin.validate({"pip": ["requests"]})  # no keyless key: nothing to check


def test_create_is_idempotent_and_context_gets_paths_and_ids_only(tmp_path: Path) -> None:
    registry = NodeRegistry(sleep=lambda _: None)
    plugin = plugin_for(registry)
    env = {"keyless": file_config(tmp_path, session_name="n-{node}")}
    uri = plugin.get_uris(env)[0]
    for _ in range(3):
        asyncio.run(plugin.create(uri, env, RuntimeEnvContext(), LOG))
    assert registry.starts == 1 and len(registry) == 1
    context = RuntimeEnvContext()
    plugin.modify_context([uri], env, context, LOG)
    variables = context.env_vars
    assert variables[MARKER_VARIABLE] == _ident(uri)
    token_file = Path(variables["AWS_WEB_IDENTITY_TOKEN_FILE"])
    token = token_file.read_text()
    assert token == Path(env["keyless"]["source"]["path"]).read_text()
    assert oct(token_file.parent.stat().st_mode & 0o777) == "0o700"
    assert variables["AWS_ROLE_ARN"] == ROLE
    text = json.dumps(variables)
    assert token not in text and redact(text) == text
    manifest = json.loads(Path(variables[MANIFEST_VARIABLE]).read_text())
    assert "source" not in manifest["config"]
    assert manifest["targets"]["aws"] == str(token_file)
    registry.stop_all()


def test_a_per_rank_session_policy_keeps_the_role_out_of_the_node_variables(
        tmp_path: Path) -> None:
    """The node's variables are shared by every worker: AWS_ROLE_ARN + the token file would
    let plain boto3 assume the whole role without the rank's session policy, so they are left
    out; the token file is still kept for the per-rank helpers (manifest)."""
    registry = NodeRegistry(sleep=lambda _: None)
    plugin = plugin_for(registry)
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/{rank}/*"}]}
    env = {"keyless": file_config(tmp_path, session_policy=policy)}
    uri = plugin.get_uris(env)[0]
    asyncio.run(plugin.create(uri, env, RuntimeEnvContext(), LOG))
    context = RuntimeEnvContext()
    plugin.modify_context([uri], env, context, LOG)
    assert not {"AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"} & set(context.env_vars)
    manifest = json.loads(Path(context.env_vars[MANIFEST_VARIABLE]).read_text())
    assert Path(manifest["targets"]["aws"]).is_file()
    registry.stop_all()


def test_create_runs_off_the_event_loop(tmp_path: Path) -> None:
    """The factory blocks until a coroutine on the agent's loop releases it: that can only
    happen if create awaits the blocking work in an executor."""
    released = threading.Event()
    seen: list[bool] = []

    def factory(config: KeylessConfig) -> Keyless:
        seen.append(released.wait(timeout=60))
        return Keyless(config)

    plugin = plugin_for(NodeRegistry(identity_factory=factory, sleep=lambda _: None))
    env = {"keyless": file_config(tmp_path)}

    async def scenario() -> None:
        creating = asyncio.ensure_future(plugin.create(None, env, RuntimeEnvContext(), LOG))
        await asyncio.sleep(0)
        released.set()  # runs on the loop while create is in progress
        await creating

    asyncio.run(scenario())
    assert seen == [True]
    plugin.registry.stop_all()


def idp_config() -> dict[str, Any]:
    return {"source": {"type": "client_credentials", "token_url": "https://idp.example/token",
                       "client_id": "trainer", "client_secret": "s3cr3t-for-unit-test"},
            "target": {"aws": {"role_arn": ROLE}},
            "refresh": {"initial_backoff_seconds": 1.0, "max_backoff_seconds": 8.0}}


def scripted_idp(*answers: tuple[int, str]) -> Recorder:
    """A token endpoint answering ``(status, error)`` pairs in order (200: a fresh token)."""
    queue = list(answers)

    def respond(request: httpx.Request) -> httpx.Response:
        status, error = queue.pop(0)
        if status != 200:
            return httpx.Response(status, json={"error": error})
        return httpx.Response(200, json={"access_token": make_jwt(aud="sts.amazonaws.com"),
                                         "token_type": "Bearer", "expires_in": 600})

    return Recorder(respond)


def test_transient_idp_errors_are_retried_with_backoff() -> None:
    recorder = scripted_idp((503, "temporarily_unavailable"), (503, "temporarily_unavailable"),
                            (200, ""))
    sleeps: list[float] = []
    registry = NodeRegistry(identity_factory=lambda c: Keyless(c, http=recorder.http),
                            sleep=sleeps.append)
    entry = registry.ensure(KeylessConfig.model_validate(idp_config()))
    assert len(recorder.requests) == 3
    assert sleeps == [1.0, 2.0]
    assert entry.keeper.files
    registry.stop_all()


def test_a_permanent_idp_error_fails_at_once_and_is_not_cached() -> None:
    recorder = scripted_idp((401, "invalid_client"), (200, ""))
    sleeps: list[float] = []
    registry = NodeRegistry(identity_factory=lambda c: Keyless(c, http=recorder.http),
                            sleep=sleeps.append)
    config = KeylessConfig.model_validate(idp_config())
    with pytest.raises(SourceMisconfigured) as info:
        registry.ensure(config)
    assert "s3cr3t-for-unit-test" not in str(info.value)
    assert len(recorder.requests) == 1 and sleeps == [] and len(registry) == 0
    registry.ensure(config)  # Ray asks again later (after its own failed-env TTL): works
    assert len(registry) == 1
    registry.stop_all()


def test_rays_uri_cache_stops_the_refresher_when_its_last_user_is_gone(
        tmp_path: Path) -> None:
    registry = NodeRegistry(sleep=lambda _: None)
    plugin = plugin_for(registry)
    cache = URICache(plugin.delete_uri, cache_limit_bytes())  # what Ray builds per plugin
    envs = [{"keyless": file_config(tmp_path, session_name=f"s{i}-{{pid}}")} for i in (1, 2)]
    uris = [plugin.get_uris(env)[0] for env in envs]
    for env, uri in zip(envs, uris, strict=True):
        cache.add(uri, int(asyncio.run(plugin.create(uri, env, RuntimeEnvContext(), LOG))))
    directories = [registry.get(_ident(u)).directory.path  # type: ignore[union-attr]
                   for u in uris]
    assert len(registry) == 2
    cache.mark_unused(uris[0])
    assert registry.get(_ident(uris[0])) is None
    assert not directories[0].exists() and directories[1].exists()
    assert uris[0] not in cache and uris[1] in cache
    cache.mark_unused(uris[1])
    assert len(registry) == 0 and not directories[1].exists()


def test_schema_is_titled_for_ray_and_validates_the_config(tmp_path: Path) -> None:
    schema = ray_schema()
    assert schema["title"] == "keyless"
    jsonschema.validate(file_config(tmp_path), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"target": {"aws": {"role_arn": ROLE}}, "bogus": 1}, schema)


@pytest.mark.parametrize(("name", "spec", "audience"),
                         [(name, spec, audience) for name, spec, audience, _ in CASES])
def test_the_worker_manifest_agrees_with_the_registry(tmp_path: Path, name: str,
                                                      spec: dict[str, Any],
                                                      audience: str) -> None:
    """The node's manifest points each worker at the token file of its target's audience:
    the same audience Keyless, delivery and doctor use (tests/core/test_registry.py)."""
    from keyless.delivery import TokenDirectory, delivery_audiences
    from keyless_ray.agent import worker_manifest

    token = tmp_path / "token"
    token.write_text(make_jwt(aud=audience))
    identity = Keyless({"source": {"type": "file", "path": str(token)},
                        "target": {name: spec}})
    directory = TokenDirectory(tmp_path / "files")
    files = {aud: directory.write(aud, identity.token(aud)) for aud in delivery_audiences(identity)}
    manifest = worker_manifest(identity, "id", files)
    assert manifest["targets"] == {name: str(files[audience])}
    assert identity.target_audience(name) == audience
