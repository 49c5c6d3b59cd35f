"""The bad inputs issue 18 found mishandled, tried as a user meets them: through the real CLI
(``python -m keyless``), a raw socket to the dev issuer, and the library calls a service
makes. Each must end within a bound with a typed error that names the field or claim at fault
(CLI: one ``keyless:`` line on stderr, exit 2 for a config problem, no traceback) and never
shows a secret it was given. The summary line counts them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from keyless import ConfigError, TokenRejected
from keyless.dev.issuer import DevClient, DevIssuer
from keyless.verify import Verifier, check_times

SECRET = "bad-input-SENTINEL-7f3a"
ROLE = "arn:aws:iam::123456789012:role/trainer"
BOUND_SECONDS = 30.0


@dataclass(frozen=True)
class CliCase:
    """``keyless ARGS`` with ``{dir}`` and ``{config}`` filled in, ``config`` written first."""

    name: str
    args: tuple[str, ...]
    config: str | None
    exit_code: int
    names: str


def _aws_yaml(extra: str = "", source: str = "{type: file, path: /var/run/token}") -> str:
    return f"source: {source}\ntarget:\n  aws:\n    role_arn: {ROLE}\n{extra}"


BIG_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/" + "x" * 2100}]})
CLI_CASES = [
    CliCase("a key given twice", ("env", "--config", "{config}"),
            "source: {type: env}\n" + _aws_yaml(), 2, "'source'"),
    CliCase("a session policy that is not JSON", ("env", "--config", "{config}"),
            _aws_yaml("    session_policy: 'not json'\n"), 2, "target.aws.session_policy"),
    CliCase("a session policy over 2048 characters", ("env", "--config", "{config}"),
            _aws_yaml(f"    session_policy: '{BIG_POLICY}'\n"), 2, "target.aws.session_policy"),
    CliCase("a role ARN with a trailing newline", ("env", "--config", "{config}"),
            json.dumps({"source": {"type": "file", "path": "/t"},
                        "target": {"aws": {"role_arn": ROLE + "\n"}}}), 2, "target.aws.role_arn"),
    CliCase("a metadata host with a scheme", ("env", "--config", "{config}"),
            _aws_yaml(source="{type: gcp_metadata, metadata_host: 'http://evil.example'}"),
            2, "source.metadata_host"),
    CliCase("a config path that is a directory", ("env", "--config", "{dir}"), None, 2,
            "directory"),
    CliCase("a token_dir under a regular file", ("env", "--config", "{config}"),
            _aws_yaml() + "delivery: {token_dir: '{config}/sub'}\n", 2, "delivery.token_dir"),
    CliCase("a token_dir under /proc", ("env", "--config", "{config}"),
            _aws_yaml() + "delivery: {token_dir: /proc/self/keyless}\n", 2, "delivery.token_dir"),
    CliCase("a port out of range", ("serve-credentials", "--config", "{config}", "--port",
                                    "99999"), _aws_yaml(), 2, "--port"),
    CliCase("a secret in a token_url's userinfo", ("env", "--config", "{config}"),
            f"source: {{type: client_credentials, token_url: 'https://u:{SECRET}@idp.example/t',"
            " client_id: c, client_secret: x}\ntarget: {aws: {role_arn: " + ROLE + "}}\n",
            2, "source.token_url"),
    CliCase("a secret in the MLflow URI's userinfo", ("env", "--config", "{config}"),
            _aws_yaml() + f"audit: {{sinks: [mlflow], mlflow_tracking_uri: "
            f"'https://u:{SECRET}@mlflow.example'}}\n", 2, "audit.mlflow_tracking_uri"),
    CliCase("a FIFO as the token file", ("token", "--config", "{config}"),
            _aws_yaml(source="{type: file, path: '{dir}/fifo'}"), 1, "FIFO"),
    CliCase("a command printing 20 MB", ("token", "--config", "{config}"),
            _aws_yaml(source="{type: command, command: [sh, -c, 'head -c 20000000 /dev/zero "
                             "| tr \"\\\\0\" a']}"), 1, "more than"),
    CliCase("a failing command printing a password", ("token", "--config", "{config}"),
            _aws_yaml(source="{type: command, command: [sh, -c, 'echo login failed: password "
                             f"{SECRET} api_key={SECRET} >&2; exit 3']}}"), 1, "status 3"),
]


def _run_cli(case: CliCase, workdir: Path) -> list[str]:
    """Problems with how ``case`` was handled (empty: handled well)."""
    config = workdir / "keyless.yaml"
    fill = {"{dir}": str(workdir), "{config}": str(config)}
    if case.config is not None:
        text = case.config
        for key, value in fill.items():
            text = text.replace(key, value)
        config.write_text(text)
    args = [arg.replace("{dir}", fill["{dir}"]).replace("{config}", fill["{config}"])
            for arg in case.args]
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "keyless", *args], capture_output=True,
                              text=True, timeout=BOUND_SECONDS, env=env, cwd=workdir)
    except subprocess.TimeoutExpired:
        return [f"still running after {BOUND_SECONDS:.0f} s"]
    problems = []
    output = done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if done.returncode != case.exit_code:
        problems.append(f"exit {done.returncode}, expected {case.exit_code}")
    if "Traceback" in output:
        problems.append("a traceback")
    if SECRET in output:
        problems.append("the secret in the output")
    if case.names not in done.stderr:
        problems.append(f"stderr does not name {case.names!r}")
    if case.args[0] != "serve-credentials" and len(lines) != 1:  # argparse: usage + error
        problems.append(f"{len(lines)} stderr lines, expected 1")
    if time.monotonic() - started > BOUND_SECONDS:
        problems.append("over the time bound")
    return problems


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND_SECONDS) as conn:
        conn.sendall(request)
        conn.shutdown(socket.SHUT_WR)
        return conn.recv(4096)


def _library_cases(issuer: DevIssuer) -> dict[str, Callable[[], list[str]]]:
    def refused(call: Callable[[], object], error: type[Exception], names: str) -> list[str]:
        try:
            call()
        except error as exc:
            return [] if names in str(exc) or names == getattr(exc, "claim", None) \
                or names == getattr(exc, "field", None) else [f"{exc!s} does not name {names}"]
        except Exception as exc:  # the point: any other type is a failure
            return [f"{type(exc).__name__} instead of {error.__name__}"]
        return ["accepted"]

    def content_length(value: bytes) -> list[str]:
        answer = _raw(issuer.port, b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: " + value
                      + b"\r\n\r\ngrant_type=client_credentials")
        return [] if answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400") \
            else [f"answered {answer[:30]!r}"]

    return {
        "verifier algorithm 'RSXYZ'": lambda: refused(
            lambda: Verifier(issuer.url, "a", algorithms=["RSXYZ"]), ConfigError, "algorithms"),
        "verifier leeway 1e9": lambda: refused(
            lambda: Verifier(issuer.url, "a", leeway_seconds=1e9), ConfigError,
            "leeway_seconds"),
        "verifier leeway -1": lambda: refused(
            lambda: Verifier(issuer.url, "a", leeway_seconds=-1), ConfigError, "leeway_seconds"),
        "exp = 10**400": lambda: refused(
            lambda: check_times({"exp": 10**400, "iat": 0}, time.time(), 0), TokenRejected,
            "exp"),
        "iat = 10**400": lambda: refused(
            lambda: check_times({"exp": time.time() + 60, "iat": 10**400}, time.time(), 0),
            TokenRejected, "iat"),
        "a 1.4 MB token": lambda: refused(
            lambda: Verifier(issuer.url, "a", allow_insecure_http=True).verify(
                "e" + "x" * 1_400_000 + ".e.e"), TokenRejected, "bytes"),
        "dev issuer Content-Length: -1": lambda: content_length(b"-1"),
        "dev issuer Content-Length: abc": lambda: content_length(b"abc"),
    }


def test_every_bad_input_gets_a_typed_error_naming_the_fault(
        tmp_path: Path, reliability_summary: Callable[..., str]) -> None:
    os.mkfifo(tmp_path / "fifo")
    failures: dict[str, list[str]] = {}
    for case in CLI_CASES:
        workdir = tmp_path / case.name.replace(" ", "-").replace("/", "")
        workdir.mkdir()
        if "FIFO" in case.name:
            os.mkfifo(workdir / "fifo")
        if problems := _run_cli(case, workdir):
            failures[case.name] = problems
    with DevIssuer([DevClient("trainer", SECRET)]) as issuer:
        library = _library_cases(issuer)
        for name, check in library.items():
            if problems := check():
                failures[name] = problems
    tried = len(CLI_CASES) + len(library)
    reliability_summary("bad inputs (issue 18)", load="n/a", faults="n/a", bad_inputs=tried,
                        failures=len(failures), handled=tried - len(failures))
    assert not failures, failures
