"""examples/github-actions: the workflow is well formed, and its keyless steps run on this
machine against a loopback stand-in for the runner's OIDC token endpoint.

- the workflow parses, grants ``id-token: write``, pins every action, and every file it names
  exists (``--working-dir`` holds the job script);
- its keyless config loads and uses the ``github_actions`` source;
- the "Check the federation" step (``keyless doctor --config "$KEYLESS_CONFIG"``) runs as bash
  would run it, with ``ACTIONS_ID_TOKEN_REQUEST_URL``/``_TOKEN`` pointing at
  :class:`~tests.core.example_fixtures.GithubOidcEndpoint` (tokens signed by the dev issuer)
  and STS at the verifying front, the role trusting ``trust-policy.json`` (GitHub's issuer host
  replaced by the dev issuer's): the ``main`` branch's token passes every check including the
  exchange, another branch's token fails the exchange (exit 1);
- the step that writes the runtime env runs too, and its ``keyless`` value is keyless.yaml.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from keyless import load_config
from keyless.dev.issuer import DevIssuer
from tests.core.example_fixtures import (
    EXAMPLES,
    ROOT,
    GithubOidcEndpoint,
    allow_audiences,
    install_trust_policy,
    local_config,
)

HERE = EXAMPLES / "github-actions"
WORKFLOW = HERE / "train-on-ray.yml"
GITHUB_ISSUER_HOST = "token.actions.githubusercontent.com"
MAIN = "repo:my-org/ml-training:ref:refs/heads/main"


def _workflow() -> dict[Any, Any]:
    return dict(yaml.safe_load(WORKFLOW.read_text(encoding="utf-8")))


def _steps() -> list[dict[str, Any]]:
    (job,) = _workflow()["jobs"].values()
    return list(job["steps"])


def _step(name: str) -> dict[str, Any]:
    found = [s for s in _steps() if s.get("name") == name]
    assert len(found) == 1, f"{WORKFLOW.name}: no single step named {name!r}"
    return found[0]


def test_workflow_is_well_formed() -> None:
    workflow = _workflow()
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers, "the workflow has no trigger"
    assert workflow["permissions"]["id-token"] == "write"
    (job,) = workflow["jobs"].values()
    assert job.get("permissions", {}).get("id-token", "write") == "write"
    for step in job["steps"]:
        assert "uses" in step or "run" in step, step
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), step["uses"]


def test_every_file_the_workflow_names_exists() -> None:
    text = WORKFLOW.read_text(encoding="utf-8")
    named = set(re.findall(r"examples/[\w./-]*[\w]", text))
    assert named, "the workflow names no example file"
    for path in named:
        assert (ROOT / path).exists(), f"{WORKFLOW.name} names {path}, which does not exist"
    submit = _step("Submit the training job")["run"]
    working_dir = re.search(r"--working-dir (\S+)", submit)
    script = re.search(r"-- python (\S+)", submit)
    assert working_dir and script, submit
    job_script = ROOT / working_dir[1] / script[1]
    assert job_script.is_file(), job_script
    ast.parse(job_script.read_text(encoding="utf-8"))  # ray is not in this environment


def test_keyless_config_loads_with_the_github_source() -> None:
    (job,) = _workflow()["jobs"].values()
    config = load_config(ROOT / job["env"]["KEYLESS_CONFIG"])
    assert config.source.type == "github_actions"
    assert config.target.aws is not None


def _run_step(step: dict[str, Any], env: dict[str, str],
              cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a step's ``run:`` as the runner does (bash -e), with the job's and step's env."""
    (job,) = _workflow()["jobs"].values()
    full = {**os.environ, **job.get("env", {}), **step.get("env", {}), **env}
    full["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full.get('PATH', '')}"
    return subprocess.run(["bash", "-e", "-c", step["run"]], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def federation(dev_issuer: DevIssuer, aws_stack: Any, tmp_path: Path) -> dict[str, str]:
    """The AWS side of the example on the local stack, and the env a runner step gets."""
    config = load_config(HERE / "keyless.yaml")
    assert config.target.aws is not None
    allow_audiences(aws_stack, dev_issuer.issuer, [config.target.aws.audience])
    trust = json.loads((HERE / "trust-policy.json").read_text())
    role = install_trust_policy(aws_stack, config.target.aws.role_arn.rsplit("/", 1)[1], trust,
                                GITHUB_ISSUER_HOST, dev_issuer.issuer)
    assert role == config.target.aws.role_arn
    # the example config as is, but allowed to reach the dev issuer's http loopback discovery
    local = local_config(HERE / "keyless.yaml", tmp_path / "keyless.yaml")
    return {**aws_stack.env(), "KEYLESS_CONFIG": str(local), "PYTHONPATH": str(ROOT)}


def _claims(sub: str) -> dict[str, str]:
    repository, _, ref = sub.removeprefix("repo:").partition(":ref:")
    return {"repository": repository, "ref": ref, "repository_owner": repository.split("/")[0],
            "event_name": "push", "runner_environment": "github-hosted"}


def test_check_step_passes_for_main_with_a_loopback_token_endpoint(
        federation: dict[str, str], dev_issuer: DevIssuer, aws_stack: Any,
        tmp_path: Path) -> None:
    before = len(aws_stack.front.accepted)
    with GithubOidcEndpoint(dev_issuer, MAIN, **_claims(MAIN)) as github:
        done = _run_step(_step("Check the federation"), {**federation, **github.env()},
                         tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "doctor: all checks passed" in done.stdout
    assert re.search(r"^ok\s+exchange\b", done.stdout, re.MULTILINE), done.stdout
    assert github.audiences and set(github.audiences) == {"sts.amazonaws.com"}
    accepted = aws_stack.front.accepted[before:]
    assert [a["sub"] for a in accepted] == [MAIN]
    assert github.request_token not in done.stdout + done.stderr


def test_check_step_fails_for_another_branch(federation: dict[str, str],
                                             dev_issuer: DevIssuer, aws_stack: Any,
                                             tmp_path: Path) -> None:
    feature = "repo:my-org/ml-training:ref:refs/heads/feature"
    before = len(aws_stack.front.accepted)
    with GithubOidcEndpoint(dev_issuer, feature, **_claims(feature)) as github:
        done = _run_step(_step("Check the federation"), {**federation, **github.env()},
                         tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"^FAIL\s+exchange\b.*trust policy", done.stdout, re.MULTILINE), \
        done.stdout
    assert len(aws_stack.front.accepted) == before


def test_check_step_without_id_token_permission_says_so(tmp_path: Path) -> None:
    env = {k: "" for k in ("ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN")}
    env["KEYLESS_CONFIG"] = str(HERE / "keyless.yaml")
    done = _run_step(_step("Check the federation"), env, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "id-token: write" in done.stdout + done.stderr


def test_runtime_env_step_carries_keyless_yaml(tmp_path: Path) -> None:
    done = _run_step(_step("Write the job's runtime env from keyless.yaml"),
                     {"KEYLESS_CONFIG": str(HERE / "keyless.yaml")}, tmp_path)
    assert done.returncode == 0, done.stderr
    runtime_env = json.loads((tmp_path / "runtime_env.json").read_text())
    assert runtime_env["worker_process_setup_hook"] == "keyless_ray.setup"
    assert runtime_env["keyless"] == yaml.safe_load((HERE / "keyless.yaml").read_text())
    load_config(runtime_env["keyless"])
    assert "$(cat runtime_env.json)" in _step("Submit the training job")["run"]
