"""Hardening of the command line and the loopback servers (issue 18, "Hardening"), against real
servers on loopback, real ``python -m keyless`` subprocesses and raw sockets:

1. a loopback server (credential endpoint, dev issuer) frees the thread of a connection that
   never sends a whole request, within its request timeout, serves others meanwhile, and
   answers connections beyond its bound 503 at once;
2. ``serve-credentials`` checks that it can serve before it prints its exports; a transient
   failure at startup is really tried again with backoff, a bounded number of times;
3. every option of every command has help text;
4. audit events reach stderr only with ``--audit-stderr``;
5. the global options work after the command too (and after ``--`` belong to the command);
6. a bad ``Content-Length`` gets a 400 JSON error, no traceback and no hung thread;
7. a pickled ``Keyless`` carries its source's secret but no token, as docs/security.md says.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from botocore.credentials import RefreshableCredentials

from keyless import Keyless
from keyless.cli.main import build_parser
from keyless.delivery import TokenDirectory
from keyless.delivery.credential_server import CREDENTIALS_PATH, CredentialServer
from keyless.delivery.loopback import LoopbackHttpServer
from keyless.dev.issuer import DevIssuer
from tests.core.helpers import make_jwt

ROLE = "arn:aws:iam::123456789012:role/trainer"
SECRET = "hardening-client-secret-7f3a"
ROOT = Path(__file__).resolve().parents[2]
KEYLESS = [sys.executable, "-m", "keyless"]


def _until(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _handler_threads() -> int:
    """Threads serving a connection, in this process (ThreadingMixIn names them so)."""
    return sum(1 for t in threading.enumerate() if "process_request_thread" in t.name)


def _baseline() -> int:
    """The handler threads once those of earlier tests' connections ended (their servers'
    request timeout, 10 s by default, bounds that)."""
    _until(lambda: _handler_threads() == 0, 12)
    return _handler_threads()


def _answer(sock: socket.socket, seconds: float = 5.0) -> bytes:
    """Everything the server sends until it closes (b"" on a reset)."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _half_request(port: int, path: str) -> socket.socket:
    """A connection that sends the start of a request and never the rest."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
    return sock


# ------------------------------------------------------------------ 1. slow clients

def _credentials() -> RefreshableCredentials:
    def refresh() -> dict[str, str]:
        expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        return {"access_key": "ASIAHARDENINGTEST001", "secret_key": "not-a-secret",
                "token": "not-a-token", "expiry_time": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}

    return RefreshableCredentials.create_from_metadata(refresh(), refresh_using=refresh,
                                                       method="test")


class Served:
    """A started loopback server: its port, a path to hold half-open, a normal request."""

    def __init__(self, port: int, path: str, normal: Callable[[], int]) -> None:
        self.port, self.path, self.normal = port, path, normal


@pytest.fixture(params=["credential-server", "dev-issuer"])
def served(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """Each server kind with a 1 s request timeout (the class attribute every server reads)."""
    monkeypatch.setattr(LoopbackHttpServer, "request_timeout", 1.0, raising=False)
    if request.param == "dev-issuer":
        with DevIssuer({"trainer": SECRET}) as issuer:
            url = issuer.issuer + "/jwks"
            yield Served(issuer.port, "/jwks", lambda: httpx.get(url, timeout=5).status_code)
        return
    identity = Keyless({"source": {"type": "env"}, "audit": {"sinks": []},
                        "target": {"aws": {"role_arn": ROLE, "region": "eu-west-1"}}}, environ={})
    directory = TokenDirectory()
    try:
        with CredentialServer(identity, token_dir=directory,
                              credentials=_credentials()) as server:
            token = server.token_file.read_text()
            yield Served(server.port, CREDENTIALS_PATH, lambda: httpx.get(
                server.url, headers={"Authorization": token}, timeout=5).status_code)
    finally:
        directory.cleanup()


def test_slow_clients_lose_their_threads_after_the_request_timeout(served: Served) -> None:
    baseline = _baseline()
    slow = [_half_request(served.port, served.path) for _ in range(5)]
    try:
        assert _until(lambda: _handler_threads() >= baseline + 5, 2), "slow clients not accepted"
        assert served.normal() == 200  # served while the slow ones hold their connections
        # timeout 1 s + slack: each slow connection is closed, unanswered, and its thread ends
        assert _until(lambda: _handler_threads() <= baseline, 3), (
            f"{_handler_threads() - baseline} threads still held by slow clients")
        for sock in slow:
            assert _answer(sock, 2) == b""
    finally:
        for sock in slow:
            sock.close()


def test_connections_beyond_the_bound_are_refused_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LoopbackHttpServer, "max_connections", 3, raising=False)
    monkeypatch.setattr(LoopbackHttpServer, "request_timeout", 2.0, raising=False)
    with DevIssuer({"trainer": SECRET}) as issuer:
        baseline = _baseline()
        slow = [_half_request(issuer.port, "/jwks") for _ in range(3)]
        try:
            assert _until(lambda: _handler_threads() >= baseline + 3, 2)
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", issuer.port), timeout=5) as extra:
                extra.sendall(b"GET /jwks HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = _answer(extra, 3)
            assert time.monotonic() - started < 1.5, "the extra connection was not refused at once"
            assert answer == b"" or answer.startswith(b"HTTP/1.1 503 "), answer[:200]
            if answer:
                assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["code"] == "ServiceUnavailable"
            assert _handler_threads() <= baseline + 3  # no thread for the refused one
        finally:
            for sock in slow:
                sock.close()
        assert _until(lambda: httpx.get(issuer.jwks_uri, timeout=5).status_code == 200, 4)


# ------------------------------------------------------------------ 2. check first, retry

def _cc_config(path: Path, token_url: str, secret: str = SECRET, **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({
        "source": {"type": "client_credentials", "token_url": token_url, "client_id": "trainer",
                   "client_secret": secret, "audience": "sts.amazonaws.com"},
        "target": {"aws": {"role_arn": ROLE, "region": "eu-west-1"}},
        "allow_insecure_http": True, **extra}))
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_credentials_checks_before_it_prints_its_exports(tmp_path: Path) -> None:
    with DevIssuer({"trainer": SECRET}) as issuer:
        spec = _cc_config(tmp_path / "spec.yaml", issuer.token_endpoint, secret="wrong-secret")
        proc = subprocess.Popen([*KEYLESS, "serve-credentials", "--config", str(spec)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 1, err
    assert out == "", "exports printed although no credential can be served"
    last = err.rstrip().splitlines()[-1]
    assert last.startswith("keyless: source client_credentials: ") and "fix:" in last, err
    assert "wrong-secret" not in err


def test_exec_tries_a_transient_failure_again_with_backoff(tmp_path: Path) -> None:
    """The IdP is down when exec starts and comes up after the first failure: exec retries
    (as the error's "retried with backoff" says) and runs the command."""
    port = _free_port()
    issuer = DevIssuer({"trainer": SECRET}, port=port)  # keys made now, bound later
    spec = _cc_config(tmp_path / "spec.yaml", f"http://127.0.0.1:{port}/token")
    child = "import os; print(open(os.environ['AWS_WEB_IDENTITY_TOKEN_FILE']).read().count('.'))"
    proc = subprocess.Popen([*KEYLESS, "exec", "--config", str(spec), "--", sys.executable,
                             "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stderr is not None
        first = ""
        while "trying again" not in first:  # the failure, then exec's note that it waits
            line = proc.stderr.readline()
            assert line, first
            first += line
        assert "keyless exec: attempt 1 of 4 failed (SourceUnavailable, transient)" in first
        assert "cannot reach" in first
        issuer.start()
        out, err = proc.communicate(timeout=60)
    finally:
        issuer.stop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, first + err
    assert out.strip() == "2"  # the child read a JWT from the token file
    assert issuer.token_requests() >= 1


def test_a_transient_failure_gives_up_after_a_bounded_number_of_attempts(tmp_path: Path) -> None:
    spec = _cc_config(tmp_path / "spec.yaml", f"http://127.0.0.1:{_free_port()}/token",
                      refresh={"initial_backoff_seconds": 0.05})
    started = time.monotonic()
    done = subprocess.run([*KEYLESS, "exec", "--config", str(spec), "--", "true"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert time.monotonic() - started < 30
    for attempt in (1, 2, 3):
        assert f"attempt {attempt} of 4 failed" in done.stderr
    assert "keyless exec: gave up after 4 attempts" in done.stderr
    assert done.stderr.rstrip().splitlines()[-1].startswith("keyless: ")
    quiet = subprocess.run([*KEYLESS, "exec", "-q", "--config", str(spec), "--", "true"],
                           capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 1 and "attempt 1 of 4" not in quiet.stderr  # -q: errors only
    assert "gave up after 4 attempts" in quiet.stderr


# ------------------------------------------------------------------ 3. help everywhere

def test_every_option_of_every_command_has_help() -> None:
    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, where: str) -> None:
        for action in parser._actions:
            name = "/".join(action.option_strings) or action.dest
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{where} {name}")
            if isinstance(action, argparse._SubParsersAction):
                described = {choice.dest for choice in action._choices_actions if choice.help}
                missing.extend(f"{where} {command} (no summary)" for command in action.choices
                               if command not in described)
                for command, sub in action.choices.items():
                    walk(sub, f"{where} {command}")

    walk(build_parser(), "keyless")
    assert missing == []
    help_text = subprocess.run([*KEYLESS, "exec", "--help"], capture_output=True, text=True,
                               timeout=60).stdout
    assert "--config FILE         the keyless config" in help_text
    assert "--token-dir DIR       a private directory" in help_text


# ------------------------------------------------------------------ 4. and 5. stderr, flags

@pytest.fixture
def spec(tmp_path: Path) -> Path:
    token_file = tmp_path / "token"
    token_file.write_text(make_jwt(aud="sts.amazonaws.com", sub="system:serviceaccount:ml:t"))
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({
        "source": {"type": "file", "path": str(token_file)},
        "target": {"aws": {"role_arn": ROLE, "region": "us-east-1"}},
        "audit": {"sinks": ["log", "jsonl"], "jsonl_path": str(tmp_path / "audit.jsonl")}}))
    return path


_CHILD = "import sys; sys.stderr.write('child-line\\n'); print(sys.argv[1:])"


def _exec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KEYLESS, *args], capture_output=True, text=True, timeout=60)


def _audit_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_audit_events_reach_stderr_only_when_asked(spec: Path, tmp_path: Path) -> None:
    plain = _exec("exec", "--config", str(spec), "--", sys.executable, "-c", _CHILD)
    assert plain.returncode == 0, plain.stderr
    assert plain.stderr.splitlines() == ["child-line"]  # the command's stderr is its own
    jsonl = tmp_path / "audit.jsonl"
    kept = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [e["kind"] for e in kept] == ["issue"]  # the configured sinks still get them
    asked = _exec("exec", "--config", str(spec), "--audit-stderr", "--", sys.executable, "-c",
                  _CHILD)
    assert asked.returncode == 0, asked.stderr
    assert "child-line" in asked.stderr.splitlines()
    assert [e["kind"] for e in _audit_lines(asked.stderr)] == ["issue"]
    # a config without the log sink: --audit-stderr prints them all the same
    quiet_spec = spec.with_name("jsonl-only.yaml")
    config = yaml.safe_load(spec.read_text())
    config["audit"]["sinks"] = ["jsonl"]
    quiet_spec.write_text(yaml.safe_dump(config))
    jsonl_only = _exec("--audit-stderr", "exec", "--config", str(quiet_spec), "--",
                       sys.executable, "-c", _CHILD)
    assert [e["kind"] for e in _audit_lines(jsonl_only.stderr)] == ["issue"]
    assert len(jsonl.read_text().splitlines()) == 3


@pytest.mark.parametrize(("args", "audit", "child_args"), [
    (["-q", "exec", "--config", "SPEC", "--"], False, []),
    (["exec", "-q", "--config", "SPEC", "--"], False, []),
    (["exec", "--config", "SPEC", "-q", "--"], False, []),
    (["exec", "--audit-stderr", "--config", "SPEC", "--"], True, []),
    (["--audit-stderr", "exec", "--config", "SPEC", "--"], True, []),
    (["--audit-stderr", "exec", "-q", "--config", "SPEC", "--"], False, []),  # -q wins
    (["exec", "--config", "SPEC", "--"], False, ["-q", "--audit-stderr"]),  # the child's own
])
def test_global_options_work_before_and_after_the_command(
        spec: Path, args: list[str], audit: bool, child_args: list[str]) -> None:
    argv = [str(spec) if a == "SPEC" else a for a in args]
    done = _exec(*argv, sys.executable, "-c", _CHILD, *child_args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repr(child_args)
    assert bool(_audit_lines(done.stderr)) is audit


@pytest.mark.parametrize("command", [
    ["token", "--config", "F"], ["env", "--config", "F"], ["schema"],
    ["serve-credentials", "--config", "F"], ["audit", "F"], ["doctor", "--config", "F"],
    ["dev-issuer"], ["demo"]])
def test_every_command_takes_the_global_options_after_its_name(command: list[str]) -> None:
    parser = build_parser()
    assert parser.parse_args([*command, "-q"]).quiet is True
    assert parser.parse_args(["-q", *command]).quiet is True  # not reset by the command
    after = parser.parse_args([*command, "--audit-stderr"])
    assert (after.audit_stderr, after.quiet) == (True, False)


# ------------------------------------------------------------------ 6. Content-Length

def _threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.fixture(scope="module")
def dev_issuer_process() -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen([*KEYLESS, "dev-issuer", "--client", f"trainer:{SECRET}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    port = int(line.split("ready at http://127.0.0.1:", 1)[1].split(" ", 1)[0])
    yield proc, port
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
@pytest.mark.parametrize(("headers", "status"), [
    ("Content-Length: -1", 400), ("Content-Length: abc", 400), ("Content-Length: 1_0", 400),
    ("Content-Length: +5", 400), ("Content-Length: 3\r\nContent-Length: 4", 400),
    ("Content-Length: 99999999999999999999999", 413), ("Transfer-Encoding: chunked", 411)])
def test_the_dev_issuer_answers_a_bad_content_length_with_a_json_400(
        dev_issuer_process: tuple[subprocess.Popen[str], int], headers: str,
        status: int) -> None:
    proc, port = dev_issuer_process
    assert httpx.get(f"http://127.0.0.1:{port}/jwks", timeout=5).status_code == 200
    assert _until(lambda: _threads_of(proc.pid) <= 2, 3)  # main + the accept loop
    baseline = _threads_of(proc.pid)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/"
                     f"x-www-form-urlencoded\r\n{headers}\r\n\r\ngrant_type=x".encode())
        answer = _answer(sock, 3)  # answered, then closed: no read until EOF
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"] == "invalid_request" and body["error_description"]
    assert _until(lambda: _threads_of(proc.pid) <= baseline, 2), "a handler thread hangs"
    assert proc.poll() is None


def test_the_dev_issuer_prints_no_traceback(
        dev_issuer_process: tuple[subprocess.Popen[str], int]) -> None:
    """Runs after the Content-Length cases (same module-scoped process): stop it, read its
    stderr."""
    proc, port = dev_issuer_process
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        _answer(sock, 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert "Traceback" not in err and "Error" not in err, err


def test_the_credential_endpoint_never_reads_a_get_body(
        capfd: pytest.CaptureFixture[str]) -> None:
    identity = Keyless({"source": {"type": "env"}, "audit": {"sinks": []},
                        "target": {"aws": {"role_arn": ROLE}}}, environ={})
    directory = TokenDirectory()
    try:
        with CredentialServer(identity, token_dir=directory, credentials=_credentials()) as srv:
            for length in ("-1", "abc", "100"):
                with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
                    sock.sendall(f"GET {CREDENTIALS_PATH} HTTP/1.1\r\nHost: x\r\n"
                                 f"Content-Length: {length}\r\n\r\n".encode())
                    assert _answer(sock, 3).startswith(b"HTTP/1.0 401 ")
    finally:
        directory.cleanup()
    assert "Traceback" not in capfd.readouterr().err


# ------------------------------------------------------------------ 7. pickles

def test_a_pickled_keyless_carries_the_source_secret_and_no_token() -> None:
    with DevIssuer({"trainer": SECRET}) as issuer:
        identity = Keyless({"source": {"type": "client_credentials", "client_id": "trainer",
                                       "client_secret": SECRET,
                                       "token_url": issuer.token_endpoint},
                            "target": {"oauth2": {"token_url": issuer.token_endpoint}},
                            "allow_insecure_http": True, "audit": {"sinks": []}})
        token = identity.token("sts.amazonaws.com")
        data = pickle.dumps(identity)
        assert SECRET.encode() in data  # the config, secret included, to rebuild the source
        assert SECRET.encode() in pickle.dumps(identity.config)
        assert token.encode() not in data
        assert not any(part.encode() in data for part in token.split("."))  # not even a part
        rebuilt = pickle.loads(data)
        assert rebuilt.token("sts.amazonaws.com") != token  # fetched anew on the other side
    assert SECRET not in repr(identity) + repr(identity.config)
    security = " ".join((ROOT / "docs" / "security.md").read_text().split())
    assert "dropped on pickle" not in security
    assert "the source's secret (`client_secret`, `private_key`) in the clear" in security
    for persisted in ("object spilling", "persist_result"):
        assert persisted in security
