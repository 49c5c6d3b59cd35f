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
