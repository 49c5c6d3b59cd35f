"""The `keyless` CLI: schema, token, env, exec (in-process main() and a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keyless.cli import main
from tests.core.helpers import make_jwt

ROLE = "arn:aws:iam::123456789012:role/trainer"


@pytest.fixture
def spec(tmp_path: Path) -> tuple[Path, str]:
    raw = make_jwt(aud="sts.amazonaws.com", sub="system:serviceaccount:ml:trainer")
    token_file = tmp_path / "token"
    token_file.write_text(raw)
    config = tmp_path / "spec.yaml"
    config.write_text(f"""
source:
  type: file
  path: {token_file}
target:
  aws:
    role_arn: {ROLE}
    region: us-east-1
    session_name: "job-{{job_id}}-task-{{task_id}}"
""")
    return config, raw


def rank_spec(config: Path) -> Path:
    """The same config with a per-rank session name."""
    ranked = config.with_name("ranked.yaml")
    ranked.write_text(config.read_text().replace("task-{task_id}", "rank-{rank}"))
    return ranked


def test_schema_is_the_config_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"source", "target", "refresh", "audit", "allow_insecure_http"} <= set(
        schema["properties"])


def test_token_prints_claims_and_the_jwt_only_with_raw(
        spec: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    config, raw = spec
    assert main(["-q", "token", "--config", str(config)]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["sub"] == "system:serviceaccount:ml:trainer"
    assert raw not in out.out + out.err
    assert main(["-q", "token", "--config", str(config), "--raw"]) == 0
    assert capsys.readouterr().out.strip() == raw


def test_bad_config_exits_2_naming_the_field(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("source: {type: file, path: /x}\ntarget: {aws: {role_arn: nope}}\n")
    assert main(["token", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "target.aws.role_arn" in err and "arn:aws:iam::" in err


def test_missing_token_file_exits_1_with_the_path(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "spec.json"
    missing = tmp_path / "nowhere"
    config.write_text(json.dumps({"source": {"type": "file", "path": str(missing)},
                                  "target": {"aws": {"role_arn": ROLE}}}))
    assert main(["-q", "token", "--config", str(config)]) == 1
    assert str(missing) in capsys.readouterr().err


def test_env_prints_paths_not_tokens(spec: tuple[Path, str], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    config, raw = spec
    token_dir = tmp_path / "tokens"
    assert main(["-q", "env", "--config", str(config), "--format", "json",
                 "--token-dir", str(token_dir)]) == 0
    env = json.loads(capsys.readouterr().out)
    assert raw not in json.dumps(env)
    assert Path(env["AWS_WEB_IDENTITY_TOKEN_FILE"]).read_text() == raw
    assert env["AWS_ROLE_SESSION_NAME"] == "job-task"  # empty values collapse


def test_env_with_a_rank_template_needs_a_rank(spec: tuple[Path, str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    ranked = rank_spec(spec[0])
    for name in ("RANK", "KEYLESS_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert main(["-q", "env", "--config", str(ranked), "--format", "json",
                 "--token-dir", str(tmp_path / "t1")]) == 2
    err = capsys.readouterr().err
    assert "target.aws.session_name uses {rank}" in err and "fix:" in err
    monkeypatch.setenv("RANK", "4")
    assert main(["-q", "env", "--config", str(ranked), "--format", "json",
                 "--token-dir", str(tmp_path / "t2")]) == 0
    assert json.loads(capsys.readouterr().out)["AWS_ROLE_SESSION_NAME"] == "job-rank-4"


def test_exec_runs_the_command_with_sdk_env_and_returns_its_status(
        spec: tuple[Path, str], tmp_path: Path) -> None:
    config, raw = spec
    child = ("import json, os, stat, sys; p = os.environ['AWS_WEB_IDENTITY_TOKEN_FILE'];"
             "print(json.dumps({'env': dict(os.environ), 'mode': stat.S_IMODE(os.stat(p).st_mode),"
             " 'dir': stat.S_IMODE(os.stat(os.path.dirname(p)).st_mode),"
             " 'token': open(p).read()})); sys.exit(7)")
    environ = dict(os.environ, AWS_ACCESS_KEY_ID="AKIASTATIC", AWS_SECRET_ACCESS_KEY="static",
                   KEYLESS_JOB_ID="j1", KEYLESS_TASK_ID="t2")
    result = subprocess.run([sys.executable, "-m", "keyless", "-q", "exec", "--config",
                             str(config), "--", sys.executable, "-c", child],
                            capture_output=True, text=True, env=environ, timeout=120)
    assert result.returncode == 7, result.stderr
    seen = json.loads(result.stdout)
    assert seen["token"] == raw
    assert seen["mode"] == 0o600 and seen["dir"] == 0o700
    env = seen["env"]
    assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["AWS_ROLE_ARN"] == ROLE
    assert env["AWS_ROLE_SESSION_NAME"] == "job-j1-task-t2"
    assert all(raw not in value for value in env.values())
    assert raw not in result.stderr
    assert not Path(env["AWS_WEB_IDENTITY_TOKEN_FILE"]).exists()  # cleaned up after


def test_exec_serves_a_rank_template_through_the_endpoint(spec: tuple[Path, str]) -> None:
    """A per-rank template cannot ride in AWS_ROLE_SESSION_NAME (every rank would get the
    launcher's rank): exec gives the child the per-process credential endpoint instead."""
    ranked = rank_spec(spec[0])
    child = "import json, os; print(json.dumps(dict(os.environ)))"
    environ = dict(os.environ, RANK="0", AWS_ROLE_ARN="arn:aws:iam::123456789012:role/decoy")
    result = subprocess.run([sys.executable, "-m", "keyless", "-q", "exec", "--config",
                             str(ranked), "--", sys.executable, "-c", child],
                            capture_output=True, text=True, env=environ, timeout=120)
    assert result.returncode == 0, result.stderr
    env = json.loads(result.stdout)
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"].startswith("http://127.0.0.1:")
    assert Path(env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]).name
    assert env["KEYLESS_LAUNCH_ID"]
    for name in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME"):
        assert name not in env
    assert not Path(env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]).exists()  # removed after


@pytest.mark.parametrize(("script", "status"), [
    ("exit 3", 3), ("kill -TERM $$", 143), ("kill -KILL $$", 137), ("kill -ABRT $$", 134)])
def test_exec_exits_with_the_commands_status_as_a_shell_does(
        spec: tuple[Path, str], script: str, status: int) -> None:
    result = subprocess.run([sys.executable, "-m", "keyless", "-q", "exec", "--config",
                             str(spec[0]), "--", "bash", "-c", script],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == status, result.stderr


def test_exec_without_a_command_is_bad_usage(spec: tuple[Path, str]) -> None:
    config, _ = spec
    assert main(["-q", "exec", "--config", str(config)]) == 2



def test_a_missing_config_file_is_named(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["-q", "token", "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "cannot read" in err


def test_exec_removes_what_it_wrote_in_a_given_token_dir(spec: tuple[Path, str],
                                                         tmp_path: Path) -> None:
    token_dir = tmp_path / "tokens"
    token_dir.mkdir(mode=0o700)
    (token_dir / "mine.txt").write_text("not keyless's")
    child = "import os, json; print(json.dumps(sorted(os.listdir(os.environ['DIR']))))"
    result = subprocess.run([sys.executable, "-m", "keyless", "-q", "exec", "--config",
                             str(spec[0]), "--token-dir", str(token_dir), "--", sys.executable,
                             "-c", child], capture_output=True, text=True,
                            env={**os.environ, "DIR": str(token_dir)}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 2  # the token file was there while it ran
    assert sorted(p.name for p in token_dir.iterdir()) == ["mine.txt"]  # and is gone after


def test_the_endpoint_passes_the_sts_endpoint_on_like_web_identity(spec: tuple[Path, str]
                                                                   ) -> None:
    """Web identity delivery (a plain config) and the endpoint (a per-rank one: no exchange
    happens before the child asks) give the child the same STS endpoint."""
    config = spec[0].with_name("sts.yaml")
    config.write_text(spec[0].read_text() + "    sts_endpoint_url: https://sts.example.test\n")
    child = "import json, os; print(json.dumps(dict(os.environ)))"
    for path, endpoint in ((config, False), (rank_spec(config), True)):
        result = subprocess.run([sys.executable, "-m", "keyless", "-q", "exec", "--config",
                                 str(path), "--", sys.executable, "-c", child],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        env = json.loads(result.stdout)
        assert ("AWS_CONTAINER_CREDENTIALS_FULL_URI" in env) is endpoint
        assert env["AWS_ENDPOINT_URL_STS"] == "https://sts.example.test"


def test_env_says_where_it_wrote_and_how_to_remove_it(spec: tuple[Path, str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    token_dir = tmp_path / "once"
    assert main(["-q", "env", "--config", str(spec[0]), "--token-dir", str(token_dir)]) == 0
    err = capsys.readouterr().err
    assert str(token_dir) in err and "rm -r" in err
