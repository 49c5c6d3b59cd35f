"""Sources that need no HTTP: file, env, gitlab, command (a real Python child)."""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import jwt
import pytest

from keyless.config import CommandSource, EnvSource, FileSource, GitlabSource
from keyless.errors import KeylessError, SourceMisconfigured, SourceUnavailable
from keyless.sources import (
    CommandTokenSource,
    EnvTokenSource,
    FileTokenSource,
    GitlabTokenSource,
)
from tests.core import helpers

NOW = 1_700_000_000


def make_jwt(**claims: object) -> str:
    defaults: dict[str, object] = {"iss": "https://issuer.example", "sub": "worker", "aud": "aud-1"}
    return helpers.make_jwt(3600, now=NOW, **{**defaults, **claims})


# ----------------------------------------------------------------------------- file

def test_file_reads_token_and_origin(tmp_path: Path) -> None:
    path = tmp_path / "token"
    token = make_jwt(sub="pod-a")
    path.write_text(token + "\n")
    source = FileTokenSource(FileSource(path=str(path)))
    got = source.fetch("ignored-audience")
    assert got is not None
    assert got.token.reveal() == token
    assert got.subject == "pod-a"
    assert got.expires_at == NOW + 3600
    assert got.origin == f"file:{path}"
    assert source.name == "file"
    helpers.assert_clean(repr(source), token)


def test_file_is_reread_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "token"
    first, second = make_jwt(jti="one"), make_jwt(jti="two", exp=NOW + 7200)
    path.write_text(first)
    source = FileTokenSource(FileSource(path=str(path)))
    a = source.fetch(None)
    # kubelet-style rotation: write a new file and rename it over the old one
    staged = tmp_path / "token.new"
    staged.write_text(second)
    os.replace(staged, path)
    b = source.fetch(None)
    assert a is not None and b is not None
    assert a.claims["jti"] == "one"
    assert b.claims["jti"] == "two"
    assert b.expires_at == NOW + 7200


def test_file_missing_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "token"
    with pytest.raises(SourceMisconfigured) as info:
        FileTokenSource(FileSource(path=str(path))).fetch(None)
    assert str(path) in str(info.value)
    assert str(info.value).startswith("source file:")


def test_file_missing_is_none_when_detecting(tmp_path: Path) -> None:
    source = FileTokenSource(FileSource(path=str(tmp_path / "absent")), missing_ok=True)
    assert source.fetch(None) is None


def test_file_empty_is_misconfigured_even_when_detecting(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  \n")
    with pytest.raises(SourceMisconfigured, match="empty"):
        FileTokenSource(FileSource(path=str(path)), missing_ok=True).fetch(None)


def test_file_not_a_jwt_does_not_echo_content(tmp_path: Path) -> None:
    path = tmp_path / "token"
    content = "opaque-secret-value-that-is-not-a-jwt"
    path.write_text(content)
    with pytest.raises(SourceMisconfigured) as info:
        FileTokenSource(FileSource(path=str(path))).fetch(None)
    helpers.assert_clean(str(info.value), content)


def test_file_directory_is_misconfigured(tmp_path: Path) -> None:
    with pytest.raises(SourceMisconfigured, match="cannot read"):
        FileTokenSource(FileSource(path=str(tmp_path))).fetch(None)


def test_file_without_exp_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256"))
    with pytest.raises(SourceMisconfigured, match="exp"):
        FileTokenSource(FileSource(path=str(path))).fetch(None)


def test_file_source_pickles(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(make_jwt())
    clone = pickle.loads(pickle.dumps(FileTokenSource(FileSource(path=str(path)))))
    assert clone.fetch(None) is not None


# ----------------------------------------------------------------------------- env

def test_env_read_at_fetch_time() -> None:
    environ: dict[str, str] = {}
    source = EnvTokenSource(EnvSource(variable="MY_TOKEN"), environ=environ)
    token = make_jwt(sub="from-env")
    environ["MY_TOKEN"] = token
    got = source.fetch("whatever")
    assert got is not None and got.subject == "from-env"
    assert got.origin == "env:MY_TOKEN"


def test_env_missing_names_variable_not_value() -> None:
    with pytest.raises(SourceMisconfigured) as info:
        EnvTokenSource(EnvSource(variable="MY_TOKEN"), environ={"OTHER": "x"}).fetch(None)
    assert "MY_TOKEN" in str(info.value)


def test_env_bad_value_not_echoed() -> None:
    value = "definitely-not-a-jwt-but-secret"
    source = EnvTokenSource(EnvSource(variable="T"), environ={"T": value})
    with pytest.raises(SourceMisconfigured) as info:
        source.fetch(None)
    helpers.assert_clean(str(info.value), value)
    helpers.assert_clean(repr(source), value)


# ----------------------------------------------------------------------------- gitlab

def test_gitlab_reads_configured_variable() -> None:
    token = make_jwt(sub="project_path:g/p:ref_type:branch:ref:main")
    source = GitlabTokenSource(GitlabSource(variable="AWS_ID_TOKEN"),
                               environ={"AWS_ID_TOKEN": token, "KEYLESS_ID_TOKEN": make_jwt()})
    got = source.fetch("ignored")
    assert got is not None and got.token.reveal() == token
    assert got.origin == "gitlab:AWS_ID_TOKEN"


def test_gitlab_missing_explains_id_tokens() -> None:
    source = GitlabTokenSource(GitlabSource(), environ={"CI_JOB_JWT_V2": make_jwt()})
    with pytest.raises(SourceMisconfigured) as info:
        source.fetch("https://sts.amazonaws.com")
    assert "id_tokens" in str(info.value) and "KEYLESS_ID_TOKEN" in str(info.value)


def test_gitlab_missing_is_none_when_detecting() -> None:
    assert GitlabTokenSource(environ={}, detect=True).fetch(None) is None


# ----------------------------------------------------------------------------- command

def _command(code: str, **spec: object) -> CommandSource:
    return CommandSource(command=[sys.executable, "-c", code], **spec)


def test_command_prints_jwt_and_gets_audience() -> None:
    tokens = {"aud-a": make_jwt(aud="aud-a"), "aud-b": make_jwt(aud="aud-b")}
    code = ("import os, json; "
            "print(json.loads(os.environ['TOKENS'])[os.environ['KEYLESS_AUDIENCE']])")
    source = CommandTokenSource(_command(code), environ={"TOKENS": json.dumps(tokens)})
    got = source.fetch("aud-b")
    assert got is not None and got.audience == ["aud-b"]
    assert got.origin == f"command:{Path(sys.executable).name}"


def test_command_caller_audience_wins_then_the_spec_audience() -> None:
    tokens = {"spec-aud": make_jwt(aud="spec-aud"), "caller-aud": make_jwt(aud="caller-aud")}
    code = ("import os, json; "
            "print(json.loads(os.environ['TOKENS'])[os.environ['KEYLESS_AUDIENCE']])")
    source = CommandTokenSource(_command(code, audience="spec-aud"),
                                environ={"TOKENS": json.dumps(tokens)})
    got = source.fetch("caller-aud")
    assert got is not None and got.audience == ["caller-aud"]
    got = source.fetch(None)
    assert got is not None and got.audience == ["spec-aud"]


def test_command_no_audience_means_no_variable() -> None:
    code = ("import os, sys; "
            "sys.exit(5) if 'KEYLESS_AUDIENCE' in os.environ else print(os.environ['TOKEN'])")
    got = CommandTokenSource(_command(code), environ={"TOKEN": make_jwt()}).fetch(None)
    assert got is not None


@pytest.mark.parametrize("field", ["id_token", "access_token", "token", "value"])
def test_command_json_fields(field: str) -> None:
    token = make_jwt(sub=field)
    code = f"import json; print(json.dumps({{{field!r}: {token!r}, 'expires_in': 60}}))"
    got = CommandTokenSource(_command(code), environ={}).fetch(None)
    assert got is not None and got.subject == field


def test_command_json_without_token_field() -> None:
    code = "print('{\"nothing\": 1}')"
    with pytest.raises(SourceMisconfigured, match="id_token"):
        CommandTokenSource(_command(code), environ={}).fetch(None)


def test_command_failure_reports_status_and_stderr_not_stdout() -> None:
    token = make_jwt()
    code = (f"import sys; print({token!r}); "
            "sys.stderr.write('first line\\nerror: profile dev not found\\n'); sys.exit(3)")
    with pytest.raises(SourceMisconfigured) as info:
        CommandTokenSource(_command(code), environ={}).fetch(None)
    message = str(info.value)
    assert "status 3" in message
    assert "profile dev not found" in message
    helpers.assert_clean(message, token)


def test_command_failure_hides_token_in_stderr() -> None:
    token = make_jwt()
    code = f"import sys; sys.stderr.write('token was ' + {token!r} + '\\n'); sys.exit(1)"
    with pytest.raises(SourceMisconfigured) as info:
        CommandTokenSource(_command(code), environ={}).fetch(None)
    assert "status 1" in str(info.value)
    helpers.assert_clean(str(info.value), token, token.split(".")[1])


def test_command_non_jwt_stdout_not_echoed() -> None:
    secret = "opaque-access-token-1234567890"
    with pytest.raises(SourceMisconfigured) as info:
        CommandTokenSource(_command(f"print({secret!r})"), environ={}).fetch(None)
    helpers.assert_clean(str(info.value), secret)


def test_command_empty_stdout() -> None:
    with pytest.raises(SourceMisconfigured, match="printed nothing"):
        CommandTokenSource(_command("pass"), environ={}).fetch(None)


def test_command_timeout_is_transient() -> None:
    source = CommandTokenSource(_command("import time; time.sleep(120)", timeout_seconds=0.5),
                                environ={})
    with pytest.raises(SourceUnavailable, match="no exit within"):
        source.fetch(None)


def test_command_missing_program(tmp_path: Path) -> None:
    spec = CommandSource(command=[str(tmp_path / "no-such-helper"), "--secret-arg=hunter22"])
    source = CommandTokenSource(spec, environ={})
    with pytest.raises(SourceMisconfigured, match="cannot run") as info:
        source.fetch(None)
    helpers.assert_clean(str(info.value), "hunter22")
    helpers.assert_clean(repr(source), "hunter22")


def test_errors_are_keyless_errors_and_pickle(tmp_path: Path) -> None:
    with pytest.raises(KeylessError) as info:
        FileTokenSource(FileSource(path=str(tmp_path / "x"))).fetch(None)
    clone = pickle.loads(pickle.dumps(info.value))
    assert type(clone) is SourceMisconfigured and str(clone) == str(info.value)
