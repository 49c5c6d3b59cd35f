"""Hardening of the config and the local sources (issue 18): a GCP metadata host must be a bare
host, no URL field may carry user-info, config and token-directory path problems are one-line
exit-2 errors, a FIFO as a token file is refused without blocking, a command's output is capped,
and a failing command's output never carries its secrets into errors or audit events.

Real files, FIFOs and subprocesses throughout; nothing under test is mocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from keyless import ConfigError, Keyless, load_config
from keyless.config import SOURCE_SPECS, KeylessConfig, TargetsSpec
from keyless.config.sources import CommandSource, FileSource
from keyless.delivery import TokenDirectory
from keyless.errors import SourceMisconfigured
from keyless.sources import CommandTokenSource, FileTokenSource
from keyless.sources.command import stderr_hint
from keyless.tokens import MAX_TOKEN_BYTES
from tests.core import helpers

ROLE = "arn:aws:iam::123456789012:role/trainer"
SECRET = "hunter2secret"
USERINFO_URL = f"https://user:{SECRET}@example.com/x"


def _config(source: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    return {"source": source or {"type": "file", "path": "/t"},
            "target": {"aws": {"role_arn": ROLE}}, **sections}


def _refused(document: Any) -> ConfigError:
    with pytest.raises(ConfigError) as refused:
        load_config(document)
    return refused.value


# ----------------------------------------------------------------------------- 1 metadata_host

@pytest.mark.parametrize("host", ["http://evil.example", "https://evil.example",
                                  "evil.example/computeMetadata", "evil.example?x=1",
                                  "evil.example#f", "evil.example:http", "evil.example:99999",
                                  "evil .example", "evil.example\n", "[::1", ""])
def test_gcp_metadata_host_must_be_a_bare_host(host: str) -> None:
    error = _refused(_config({"type": "gcp_metadata", "audience": "a", "metadata_host": host}))
    assert error.field == "source.metadata_host"
    assert "host[:port]" in str(error) and "fix:" in str(error)
    assert "GCE_METADATA_HOST" in str(error)


@pytest.mark.parametrize("host", ["metadata.google.internal", "169.254.169.254",
                                  "169.254.169.254:8080", "127.0.0.1:9", "[::1]:8080",
                                  "localhost"])
def test_gcp_metadata_bare_hosts_are_accepted(host: str) -> None:
    config = load_config(_config({"type": "gcp_metadata", "audience": "a",
                                  "metadata_host": host}))
    assert config.source.type == "gcp_metadata" and config.source.metadata_host == host


# ----------------------------------------------------------------------------- 2 user-info

#: A minimal valid document for every source type and target: a new type makes the walk
#: below fail with a KeyError until it is added here (and so is covered).
_SOURCES: dict[str, dict[str, Any]] = {
    "file": {"path": "/t"}, "env": {}, "github_actions": {}, "gitlab": {},
    "gcp_metadata": {}, "ambient": {}, "spiffe": {}, "aws_web_identity_token": {},
    "command": {"command": ["true"]},
    "client_credentials": {"token_url": "https://idp.example/token", "client_id": "c",
                           "client_secret": "s"},
    "token_exchange": {"subject": {"type": "file", "path": "/t"},
                       "token_url": "https://sts.example/token"},
}
_TARGETS: dict[str, dict[str, Any]] = {
    "aws": {"role_arn": ROLE},
    "gcp": {"audience": "//iam.googleapis.com/projects/1/locations/global/"
                        "workloadIdentityPools/p/providers/q"},
    "azure": {"tenant_id": "t", "client_id": "c"},
    "databricks": {"host": "https://adb.example"},
    "huggingface": {"resource": "org"},
    "oauth2": {"token_url": "https://x.example/token"},
}
#: Fields with a format of their own, refused (naming them, without the secret) before the
#: user-info check gets to them.
_OWN_FORMAT = {"target.aws.role_arn", "target.aws.region", "target.aws.session_policy",
               "source.variable"}


def _takes_str(annotation: Any) -> bool:
    if annotation is str:
        return True
    origin = typing.get_origin(annotation)
    return origin in (typing.Union, types.UnionType) and str in typing.get_args(annotation)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    args = typing.get_args(annotation) or (annotation,)
    return [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]


def _string_fields() -> list[tuple[str, str, dict[str, Any]]]:
    """(test id, dotted path, a config document with that field set to a user-info URL) for
    every string field of the schema, found by walking the models."""
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for spec in SOURCE_SPECS:
        kind = spec.model_fields["type"].default
        for name, field in spec.model_fields.items():
            if name != "type" and _takes_str(field.annotation):
                source = {"type": kind, **_SOURCES[kind], name: USERINFO_URL}
                cases.append((f"{kind}:source.{name}", f"source.{name}", _config(source)))
    for target, field in TargetsSpec.model_fields.items():
        for model in _models_in(field.annotation):
            for name, inner in model.model_fields.items():
                if _takes_str(inner.annotation):
                    doc = {"source": {"type": "file", "path": "/t"},
                           "target": {target: {**_TARGETS[target], name: USERINFO_URL}}}
                    path = f"target.{target}.{name}"
                    cases.append((path, path, doc))
    for section, field in KeylessConfig.model_fields.items():
        if section in ("source", "target"):
            continue
        for model in _models_in(field.annotation):
            for name, inner in model.model_fields.items():
                if _takes_str(inner.annotation):
                    path = f"{section}.{name}"
                    cases.append((path, path, _config(**{section: {name: USERINFO_URL}})))
    return cases


_CASES = _string_fields()


def test_the_walk_finds_the_url_fields() -> None:
    found = {path for _, path, _ in _CASES}
    assert {"source.token_url", "source.issuer", "source.metadata_host",
            "source.sts_endpoint_url", "target.gcp.token_url", "target.gcp.impersonation_url",
            "target.azure.authority_host", "target.databricks.host",
            "target.oauth2.token_url", "target.huggingface.token_url",
            "target.aws.sts_endpoint_url", "audit.mlflow_tracking_uri"} <= found


@pytest.mark.parametrize(("path", "document"), [case[1:] for case in _CASES],
                         ids=[case[0] for case in _CASES])
def test_user_info_in_any_string_field_is_refused_without_the_secret(
        path: str, document: dict[str, Any]) -> None:
    error = _refused(document)
    assert error.field == path
    for text in (str(error), repr(error), error.field or "", json.dumps(error.args)):
        helpers.assert_clean(text, SECRET)
    if path not in _OWN_FORMAT:
        assert "user:password@" in str(error) and "fix:" in str(error)


@pytest.mark.parametrize("uri", ["postgresql://mlflow:hunter2secret@db.internal/mlflow",
                                 "https://token:hunter2secret@mlflow.example",
                                 "mlflow://user:hunter2secret@mlflow.example"])
def test_user_info_in_the_mlflow_tracking_uri_is_refused(uri: str) -> None:
    error = _refused(_config(audit={"mlflow_tracking_uri": uri}))
    assert error.field == "audit.mlflow_tracking_uri"
    helpers.assert_clean(str(error), SECRET)


@pytest.mark.parametrize("host", ["user:hunter2secret@adb.example",
                                  "https://user:hunter2secret@adb.example"])
def test_user_info_in_a_scheme_less_host_is_refused(host: str) -> None:
    error = _refused({"source": {"type": "file", "path": "/t"},
                      "target": {"databricks": {"host": host}}})
    assert error.field == "target.databricks.host"
    helpers.assert_clean(str(error), SECRET)


def test_user_info_in_a_nested_source_is_refused() -> None:
    error = _refused(_config({"type": "token_exchange", "token_url": "https://sts.example/t",
                              "subject": {**_SOURCES["client_credentials"],
                                          "type": "client_credentials",
                                          "token_url": USERINFO_URL}}))
    assert error.field == "source.subject.token_url"
    helpers.assert_clean(str(error), SECRET)


def test_urls_without_user_info_still_load() -> None:
    config = load_config(_config(audit={"mlflow_tracking_uri": "databricks://profile:prefix"}))
    assert config.audit.mlflow_tracking_uri == "databricks://profile:prefix"
    load_config({"source": {"type": "file", "path": "/t"},
                 "target": {"oauth2": {"token_url": "https://x.example/t?user=a@b"},
                            "gcp": {**_TARGETS["gcp"],
                                    "service_account": "sa@p.iam.gserviceaccount.com"}}})


# ----------------------------------------------------------------------------- 3 config paths

def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keyless", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, check=False)


def _assert_one_line_exit_2(done: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_a_config_path_that_is_a_directory_is_named(tmp_path: Path) -> None:
    for value in (str(tmp_path), tmp_path):
        error = _refused(value)
        assert "is a directory" in str(error) and "fix:" in str(error)
        assert str(tmp_path) in str(error)


@pytest.mark.parametrize("value", ["conf\0ig.yaml", "/tmp/a\0b", Path("/tmp/a\0b.yaml")])
def test_a_nul_byte_in_the_config_path_is_named(value: str | Path) -> None:
    error = _refused(value)
    assert "NUL byte" in str(error) and "fix:" in str(error)


@pytest.mark.parametrize("token_dir", ["/tmp/a\0b", "/proc/self/x", "/sys/kernel/keyless"])
def test_a_bad_token_dir_is_refused_at_load(token_dir: str) -> None:
    error = _refused(_config(delivery={"token_dir": token_dir}))
    assert error.field == "delivery.token_dir" and "fix:" in str(error)


def test_a_nul_byte_anywhere_is_refused_naming_the_field() -> None:
    error = _refused(_config({"type": "command", "command": ["helper", "--x\0"]}))
    assert error.field == "source.command.1" and "NUL byte" in str(error)


def test_token_directory_failures_name_the_field(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    for path in (plain / "tokens", plain, Path("/proc/self/keyless"), "/tmp/a\0b"):
        with pytest.raises(ConfigError) as refused:
            TokenDirectory(path)
        assert refused.value.field == "delivery.token_dir"
        assert "fix:" in str(refused.value)


def _write_config(tmp_path: Path, **delivery: str) -> Path:
    token = tmp_path / "token"
    token.write_text(helpers.make_jwt(aud="sts.amazonaws.com"))
    path = tmp_path / "keyless.yaml"
    path.write_text(json.dumps(_config({"type": "file", "path": str(token)},
                                       delivery=delivery)))
    return path


def test_cli_config_path_that_is_a_directory(tmp_path: Path) -> None:
    _assert_one_line_exit_2(_cli("exec", "--config", str(tmp_path), "--", "true",
                                 cwd=tmp_path), "is a directory")
    _assert_one_line_exit_2(_cli("env", "--config", str(tmp_path), cwd=tmp_path),
                            "is a directory")


def test_cli_token_dir_under_a_regular_file(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    config = _write_config(tmp_path, token_dir=str(plain / "tokens"))
    _assert_one_line_exit_2(_cli("exec", "--config", str(config), "--", "true", cwd=tmp_path),
                            "delivery", "token_dir", "fix:")
    config = _write_config(tmp_path)
    _assert_one_line_exit_2(_cli("env", "--config", str(config), "--token-dir",
                                 str(plain / "tokens"), cwd=tmp_path), "token_dir", "fix:")


@pytest.mark.parametrize("token_dir", ["/proc/self/x", "/tmp/a\\0b"])
def test_cli_token_dir_under_proc_or_with_a_nul_byte(tmp_path: Path, token_dir: str) -> None:
    config = tmp_path / "keyless.yaml"
    config.write_text("source: {type: file, path: /t}\n"
                      f"target: {{aws: {{role_arn: '{ROLE}'}}}}\n"
                      f'delivery: {{token_dir: "{token_dir}"}}\n')
    _assert_one_line_exit_2(_cli("exec", "--config", str(config), "--", "true", cwd=tmp_path),
                            "delivery.token_dir", "fix:")


def test_cli_user_info_is_exit_2_without_the_secret(tmp_path: Path) -> None:
    config = tmp_path / "keyless.json"
    config.write_text(json.dumps({"source": {"type": "file", "path": "/t"},
                                  "target": {"oauth2": {"token_url": USERINFO_URL}}}))
    done = _cli("env", "--config", str(config), cwd=tmp_path)
    _assert_one_line_exit_2(done, "target.oauth2.token_url")
    helpers.assert_clean(done.stderr + done.stdout, SECRET)


# ----------------------------------------------------------------------------- 4 FIFO

def _within(seconds: float, call: Callable[[], object]) -> tuple[bool, dict[str, Any]]:
    """``call()`` on a daemon thread, waited for ``seconds``: whether it is still blocked, and
    its ``value`` or ``error`` (so a regression fails the test instead of hanging it)."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = call()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return thread.is_alive(), result


def test_a_fifo_as_the_token_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    source = FileTokenSource(FileSource(path=str(fifo)))
    blocked, result = _within(10, lambda: source.fetch(None))
    if blocked:  # unblock the reader so the thread ends, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO token file blocked")
    error = result.get("error")
    assert isinstance(error, SourceMisconfigured), result
    assert "source.path" in str(error) and "not a regular file" in str(error)
    assert "fix:" in str(error)


def test_a_fifo_with_a_writer_is_refused_too(tmp_path: Path) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    writer = subprocess.Popen([sys.executable, "-c",
                               f"open({str(fifo)!r}, 'w').write({helpers.make_jwt()!r})"])
    try:
        source = FileTokenSource(FileSource(path=str(fifo)))
        blocked, result = _within(10, lambda: source.fetch(None))
        assert not blocked
        assert isinstance(result.get("error"), SourceMisconfigured), result
    finally:
        writer.kill()
        writer.wait()


def test_a_directory_as_the_token_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceMisconfigured, match="not a regular file"):
        FileTokenSource(FileSource(path=str(tmp_path))).fetch(None)


# ----------------------------------------------------------------------------- 5 output cap

def _python(code: str, **spec: Any) -> CommandTokenSource:
    return CommandTokenSource(CommandSource(command=[sys.executable, "-c", code], **spec),
                              environ=dict(os.environ))


def test_the_command_output_cap_is_the_file_source_cap() -> None:
    assert MAX_TOKEN_BYTES == 1 << 20


def test_a_command_printing_20_mb_is_cut_off_with_bounded_memory() -> None:
    source = _python("import sys; sys.stdout.write('a' * (20 << 20))")
    tracemalloc.start()
    try:
        with pytest.raises(SourceMisconfigured) as info:
            source.fetch(None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "more than" in str(info.value) and str(MAX_TOKEN_BYTES) in str(info.value)
    assert "fix:" in str(info.value)
    assert peak < 8 << 20, f"peak {peak} bytes while reading a 20 MB output"


def test_a_command_is_killed_past_the_cap_not_waited_for() -> None:
    source = _python("import sys, time; sys.stdout.write('a' * (2 << 20)); sys.stdout.flush(); "
                     "time.sleep(60)", timeout_seconds=120)
    started = time.monotonic()
    with pytest.raises(SourceMisconfigured, match="more than"):
        source.fetch(None)
    assert time.monotonic() - started < 30, "the command was waited for, not killed"


def test_a_command_flooding_stderr_keeps_memory_bounded() -> None:
    source = _python("import sys; sys.stderr.write('e' * (20 << 20) + '\\nboom\\n'); "
                     "sys.exit(4)")
    tracemalloc.start()
    try:
        with pytest.raises(SourceMisconfigured) as info:
            source.fetch(None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "status 4" in str(info.value) and "boom" in str(info.value)
    assert peak < 8 << 20, f"peak {peak} bytes while draining a 20 MB stderr"


def test_a_command_under_the_cap_still_works() -> None:
    token = helpers.make_jwt()
    got = _python(f"print({token!r})").fetch(None)
    assert got is not None and got.token.reveal() == token


# ----------------------------------------------------------------------------- 6 stderr secrets

_LEAKS = [
    ("login failed: password hunter2pass", "hunter2pass"),
    ("api_key=abc123secret", "abc123secret"),
    ("client_secret: s3cr3tvalue", "s3cr3tvalue"),
    ("Authorization: Bearer opaque9value", "opaque9value"),
    ("retry with --pw=zz9plural", "zz9plural"),
    ("vault said pw: hunter3colon", "hunter3colon"),
    ("enter otp 4488125599 again", "4488125599"),
]


@pytest.mark.parametrize("order", [0, 1])
def test_a_failing_commands_secrets_reach_no_error_or_audit_event(tmp_path: Path,
                                                                  order: int) -> None:
    lines = [line for line, _ in _LEAKS]
    if order:
        lines.reverse()
    values = [value for _, value in _LEAKS]
    code = f"import sys; sys.stderr.write({chr(10).join(lines)!r} + '\\n'); sys.exit(7)"
    audit = tmp_path / "audit.jsonl"
    identity = Keyless({"source": {"type": "command", "command": [sys.executable, "-c", code]},
                        "target": {"aws": {"role_arn": ROLE}},
                        "audit": {"sinks": ["jsonl"], "jsonl_path": str(audit)}})
    with pytest.raises(SourceMisconfigured) as info:
        identity.subject_token()
    identity.audit.close()
    events = audit.read_text()
    assert events.strip(), "no audit event was written"
    assert "status 7" in str(info.value)
    for text in (str(info.value), repr(info.value), json.dumps(info.value.args), events):
        helpers.assert_clean(text, *values)


def test_a_failing_commands_hint_is_bounded_and_still_useful() -> None:
    code = "import sys; sys.stderr.write('error: profile dev not found ' + 'x' * 500); " \
           "sys.exit(2)"
    with pytest.raises(SourceMisconfigured) as info:
        _python(code).fetch(None)
    message = str(info.value)
    assert "profile dev not found" in message and "status 2" in message
    assert "x" * 200 not in message


@pytest.mark.parametrize(("line", "value"), _LEAKS)
def test_the_stderr_hint_keeps_each_kind_of_secret_out(line: str, value: str) -> None:
    hint = stderr_hint(f"first line\n{line}\n\n".encode())
    assert value not in hint and hint.endswith("[redacted]"), hint
    assert hint[:3] == line[:3]  # what came before the secret stays readable
