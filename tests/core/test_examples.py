"""Every example config in examples/ loads, and renders per-worker values as documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keyless import Keyless, WorkerContext, load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("spec", sorted(EXAMPLES.glob("**/spec.yaml")), ids=str)
def test_example_configs_load(spec: Path) -> None:
    load_config(spec)


def test_aws_example_confines_each_rank_to_its_shard() -> None:
    identity = Keyless(EXAMPLES / "aws" / "spec.yaml",
                       context=WorkerContext(job_id="run1", rank="3"))
    arguments = identity.aws().assume_role_arguments()
    assert arguments["RoleSessionName"] == "train-run1-r3"
    policy = json.loads(arguments["Policy"])
    assert policy["Statement"][0]["Resource"] == ["arn:aws:s3:::training-data/shards/3/*"]


def test_example_trust_policies_are_json() -> None:
    for path in EXAMPLES.glob("**/trust-policy*.json"):
        document = json.loads(path.read_text())
        assert document["Statement"][0]["Action"] == "sts:AssumeRoleWithWebIdentity"


def test_kuberay_manifest_is_consistent() -> None:
    """examples/ray/kuberay.yaml: the RayJob's runtime env holds a valid keyless config whose
    file source is the projected service-account token every pod mounts, requested for the
    audience the AWS target exchanges it for, under the service account the role trusts; every
    node registers the plugin before Ray starts."""
    import yaml

    documents = list(yaml.safe_load_all((EXAMPLES / "ray" / "kuberay.yaml").read_text()))
    account = next(d for d in documents if d["kind"] == "ServiceAccount")["metadata"]["name"]
    job = next(d for d in documents if d["kind"] == "RayJob")
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["worker_process_setup_hook"] == "keyless_ray.setup"
    config = load_config(runtime_env["keyless"])
    assert config.source.type == "file"
    assert config.target.aws is not None

    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"],
            *(group["template"]["spec"] for group in cluster["workerGroupSpecs"])]
    for pod in pods:
        assert pod["serviceAccountName"] == account
        env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
        assert json.loads(env["RAY_RUNTIME_ENV_PLUGINS"]) == [
            {"class": "keyless_ray.KeylessPlugin"}]
        mounts = {v["name"]: v["mountPath"] for v in pod["containers"][0]["volumeMounts"]}
        tokens = [(mounts[volume["name"]], source["serviceAccountToken"])
                  for volume in pod["volumes"] for source in volume["projected"]["sources"]
                  if "serviceAccountToken" in source]
        assert [f"{path}/{token['path']}" for path, token in tokens] == [config.source.path]
        assert [token["audience"] for _, token in tokens] == [config.target.aws.audience]
    plugin = Path(__file__).resolve().parents[2] / "ray_runtime/src/keyless_ray/__init__.py"
    assert "KeylessPlugin" in plugin.read_text()
    assert f"system:serviceaccount:{job['metadata']['namespace']}:{account}" in \
        (EXAMPLES / "ray" / "kuberay.yaml").read_text()
