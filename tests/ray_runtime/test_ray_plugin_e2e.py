"""The keyless plugin on a real local Ray 2.60 cluster: reference IdP → the node's refresher
(runtime-env agent) → each worker's own exchange → verifying STS front → S3 on moto."""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.exceptions import RuntimeEnvSetupError

from keyless import ConfigError
from keyless.audit import redact
from tests.ray_runtime.conftest import Federation, LeakGuard, RayCluster, keyless_env

pytestmark = pytest.mark.e2e

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests


def s3_client(session: Any, s3_url: str) -> Any:
    """An S3 client on moto (path style, no retries: a denial shows at once)."""
    from botocore.config import Config

    return session.client("s3", endpoint_url=s3_url,
                          config=Config(s3={"addressing_style": "path"},
                                        retries={"total_max_attempts": 1}))


def _visible_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "KEYLESS", "GOOGLE"))}


@ray.remote(num_cpus=0)
def read_object(bucket: str, key: str, s3_url: str) -> dict[str, Any]:
    import keyless_ray

    body = s3_client(keyless_ray.boto3_session(), s3_url).get_object(
        Bucket=bucket, Key=key)["Body"].read()
    return {"body": body, "env": _visible_env(), "pid": os.getpid(),
            "context": keyless_ray.worker_context().as_dict()}


@ray.remote(num_cpus=0)
class Reader:
    def read(self, bucket: str, key: str, s3_url: str) -> dict[str, Any]:
        import keyless_ray

        session = keyless_ray.boto3_session()
        body = s3_client(session, s3_url).get_object(Bucket=bucket, Key=key)["Body"].read()
        return {"body": body, "env": _visible_env(), "pid": os.getpid(),
                "token_sha": keyless_ray.identity().subject_token().fingerprint}


@ray.remote(num_cpus=0)
def plain() -> dict[str, str]:
    return _visible_env()


@ray.remote(num_cpus=0)
def helper_without_plugin() -> str:
    import keyless_ray

    keyless_ray.boto3_session()
    return "unreachable"


def test_task_and_actor_get_aws_credentials_and_no_token_in_ray_logs(
        ray_cluster: RayCluster, federation: Federation, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    aws = federation.aws
    key = federation.prefix + "hello.txt"
    aws.put_object(aws.bucket, key, b"hello")
    env = {"keyless": keyless_env(federation, tmp_path, session_name="ray-{job_id}-{task_id}")}
    from_task = ray.get(read_object.options(runtime_env=env).remote(aws.bucket, key, aws.s3_url))
    actor = Reader.options(runtime_env=env).remote()  # type: ignore[attr-defined]
    try:
        from_actor = ray.get(actor.read.remote(aws.bucket, key, aws.s3_url))
    finally:
        ray.kill(actor)

    assert from_task["body"] == from_actor["body"] == b"hello"
    for result in (from_task, from_actor):
        assert result["env"]["KEYLESS_RAY"] and result["env"]["KEYLESS_RAY_MANIFEST"]
        # each worker process serves itself its own session (keyless_ray.bootstrap): the
        # node's web-identity variables, which boto3 would try first, are gone from it
        assert result["env"]["AWS_CONTAINER_CREDENTIALS_FULL_URI"].startswith("http://127.0.0.1:")
        assert "AWS_ROLE_ARN" not in result["env"]
        assert "AWS_WEB_IDENTITY_TOKEN_FILE" not in result["env"]
        manifest = json.loads(Path(result["env"]["KEYLESS_RAY_MANIFEST"]).read_text())
        token_file = Path(manifest["targets"]["aws"])
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        leak_guard.forbid(token_file.read_text())
    context = from_task["context"]
    assert context["job_id"] and context["task_id"] and context["node"]
    sessions = [a["session_name"] for a in aws.front.accepted]
    assert f"ray-{context['job_id']}-{context['task_id']}" in sessions
    assert all(a["sub"] == "trainer" for a in aws.front.accepted)
    logs = ray_cluster.log_text()
    assert "keyless" in logs  # the agent logged the env and its context: paths and ids only
    assert redact(logs) == logs, "a JWT-shaped string is in Ray's logs"
    leak_guard.add(logs, json.dumps(from_task["env"]), json.dumps(from_actor["env"]))


def test_invalid_config_fails_naming_the_field_and_other_envs_are_unaffected(
        ray_cluster: RayCluster, federation: Federation, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    bad = keyless_env(federation, tmp_path)
    bad["target"] = {"aws": {**bad["target"]["aws"], "role_arn": "not-an-arn"}}
    with pytest.raises(RuntimeEnvSetupError) as info:
        ray.get(plain.options(runtime_env={"keyless": bad}).remote())
    assert "target.aws.role_arn" in str(info.value)

    inline = federation.config()
    inline["source"] = {**inline["source"], "client_secret": "fake-inline-secret-value"}
    with pytest.raises(RuntimeEnvSetupError) as info:
        ray.get(plain.options(runtime_env={"keyless": inline}).remote())
    assert "source.client_secret" in str(info.value)
    assert "fake-inline-secret-value" not in str(info.value)

    assert "KEYLESS_RAY" not in ray.get(plain.remote())  # no keyless key: untouched
    with pytest.raises(ConfigError) as missing:
        ray.get(helper_without_plugin.remote())
    assert "RAY_RUNTIME_ENV_PLUGINS" in str(missing.value)
    leak_guard.add(str(info.value), str(missing.value))


def test_workers_on_one_node_share_one_idp_fetch_per_config(
        ray_cluster: RayCluster, federation: Federation, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    aws = federation.aws
    key = federation.prefix + "fanout.txt"
    aws.put_object(aws.bucket, key, b"fan")
    # a config not used before on this node (its id is new): its refresher starts here
    env = {"keyless": keyless_env(federation, tmp_path,
                                  session_name=f"fan-{uuid.uuid4().hex[:6]}-{{task_id}}")}
    before, accepted_before = federation.idp.token_requests(), len(aws.front.accepted)
    actors = [Reader.options(runtime_env=env).remote() for _ in range(4)]  # type: ignore[attr-defined]
    try:
        results = ray.get([a.read.remote(aws.bucket, key, aws.s3_url) for a in actors])
    finally:
        for actor in actors:
            ray.kill(actor)
    assert len({r["pid"] for r in results}) == 4
    assert all(r["body"] == b"fan" for r in results)
    assert len({r["token_sha"] for r in results}) == 1, "one subject token for the node"
    assert federation.idp.token_requests() - before == 1
    assert len(aws.front.accepted) - accepted_before == 4, "one exchange per worker"
