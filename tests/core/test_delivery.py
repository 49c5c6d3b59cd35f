"""Token files and SDK variables for unmodified code (core/src/keyless/delivery.py)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from keyless import ConfigError, Keyless
from keyless.delivery import TokenDirectory, TokenFileKeeper, sdk_environment, worker_environment
from tests.core.helpers import make_jwt

ROLE = "arn:aws:iam::123456789012:role/trainer"


def file_config(token_file: Path, **aws: object) -> dict[str, object]:
    return {"source": {"type": "file", "path": str(token_file)},
            "target": {"aws": {"role_arn": ROLE, "region": "eu-west-1", **aws}}}


def test_token_directory_is_private_and_writes_atomically(tmp_path: Path) -> None:
    directory = TokenDirectory()
    try:
        assert stat.S_IMODE(directory.path.stat().st_mode) == 0o700
        first = directory.write("sts.amazonaws.com", "token-one")
        assert stat.S_IMODE(first.stat().st_mode) == 0o600
        inode = first.stat().st_ino
        second = directory.write("sts.amazonaws.com", "token-two")
        assert second == first
        assert second.read_text() == "token-two"
        assert second.stat().st_ino != inode  # replaced by rename, never rewritten in place
        assert [p.name for p in directory.path.iterdir()] == [first.name]  # no temp left over
        assert directory.file_for("a/b") != directory.file_for("a_b")
    finally:
        directory.cleanup()
    assert not directory.path.exists()


def test_token_directory_refuses_a_shared_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    with pytest.raises(ConfigError) as info:
        TokenDirectory(shared)
    assert info.value.field == "delivery.token_dir"
    assert "chmod 700" in str(info.value)


def test_readers_never_see_a_partial_file() -> None:
    directory = TokenDirectory()
    tokens = ["a" * 4000, "b" * 4000]
    path = directory.write("aud", tokens[0])
    stop = threading.Event()
    seen: set[str] = set()

    def read() -> None:
        while not stop.is_set():
            seen.add(path.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(300):
        directory.write("aud", tokens[i % 2])
    stop.set()
    reader.join()
    directory.cleanup()
    assert seen <= set(tokens)


def test_sdk_environment_has_paths_and_ids_only(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    raw = make_jwt(aud="sts.amazonaws.com")
    token_file.write_text(raw)
    identity = Keyless(file_config(token_file, session_name="train-{rank}"),
                       context=__import__("keyless").WorkerContext(rank="3"))
    with worker_environment(identity) as env:
        assert env["AWS_ROLE_ARN"] == ROLE
        assert env["AWS_ROLE_SESSION_NAME"] == "train-3"
        assert env["AWS_REGION"] == "eu-west-1"
        path = Path(env["AWS_WEB_IDENTITY_TOKEN_FILE"])
        assert path.read_text() == raw
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert all(raw not in value for value in env.values())
    assert not path.exists()


def test_keeper_rewrites_the_file_when_the_token_rotates(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(make_jwt(exp_in=600))
    identity = Keyless(file_config(token_file))
    directory = TokenDirectory()
    keeper = TokenFileKeeper(identity, directory)
    keeper.write_all()
    env = sdk_environment(identity, keeper.files)
    path = Path(env["AWS_WEB_IDENTITY_TOKEN_FILE"])
    before = path.read_text()
    rotated = make_jwt(exp_in=900, jti="second")
    token_file.write_text(rotated)
    identity.token_refresher(identity.resolve_audience("sts.amazonaws.com")).refresh_now()
    keeper.write_all()
    assert path.read_text() == rotated != before
    assert keeper.rotations == 1
    directory.cleanup()


def test_shadowing_variables_follow_the_configured_targets(tmp_path: Path) -> None:
    from keyless.delivery import shadowing_variables

    token_file = tmp_path / "token"
    aws_only = Keyless(file_config(token_file))
    assert "AWS_SECRET_ACCESS_KEY" in shadowing_variables(aws_only)
    assert "HF_TOKEN" not in shadowing_variables(aws_only)
    both = Keyless({"source": {"type": "file", "path": str(token_file)},
                    "target": {"aws": {"role_arn": ROLE},
                               "huggingface": {"resource": "org/model"}}})
    assert {"HF_TOKEN", "AWS_ACCESS_KEY_ID"} <= set(shadowing_variables(both))


POLICY = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::data/{rank}/*"}]}
BOUNDARY = {"accessBoundaryRules": [{
    "availableResource": "//storage.googleapis.com/b",
    "availablePermissions": ["inRole:roles/storage.objectViewer"]}]}


@pytest.mark.parametrize(("aws", "field"), [
    ({"session_policy": POLICY}, "target.aws.session_policy"),
    ({"policy_arns": ["arn:aws:iam::aws:policy/ReadOnlyAccess"]}, "target.aws.policy_arns"),
])
def test_a_narrowed_aws_target_is_never_handed_to_a_child_as_the_whole_role(
        tmp_path: Path, aws: dict[str, object], field: str) -> None:
    """AWS_ROLE_ARN + a token file would let the child's botocore assume the role without the
    session policy; refused naming the field (exec/env/worker_env), left out for Ray nodes."""
    token_file = tmp_path / "token"
    token_file.write_text(make_jwt(aud="sts.amazonaws.com"))
    identity = Keyless(file_config(token_file, **aws))
    with pytest.raises(ConfigError, match="credential-endpoint") as info:
        with worker_environment(identity):
            pass
    assert info.value.field == field
    keeper = TokenFileKeeper(identity, TokenDirectory())
    keeper.write_all()
    assert "AWS_ROLE_ARN" not in sdk_environment(identity, keeper.files, narrowed="omit")
    assert "AWS_WEB_IDENTITY_TOKEN_FILE" not in sdk_environment(identity, keeper.files,
                                                                narrowed="omit")


def test_a_gcp_access_boundary_is_never_written_to_an_external_account_file(
        tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(make_jwt(aud="//iam.googleapis.com/projects/1/pool/p"))
    identity = Keyless({"source": {"type": "file", "path": str(token_file)}, "target": {"gcp": {
        "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/"
                    "p/providers/q", "access_boundary": BOUNDARY}}})
    with pytest.raises(ConfigError) as info:
        with worker_environment(identity):
            pass
    assert info.value.field == "target.gcp.access_boundary"
    assert "google_credentials()" in str(info.value)
    keeper = TokenFileKeeper(identity, TokenDirectory())
    keeper.write_all()
    env = sdk_environment(identity, keeper.files, narrowed="omit")
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in env
    assert not list(keeper.directory.path.glob("gcp-external-account-*.json"))
