"""The loopback AWS container-credentials endpoint (core/src/keyless/credential_server.py).

The credentials behind the server are botocore's own ``RefreshableCredentials`` fed by an
in-test refresh function (the server is what is under test, not the STS exchange); clients are
plain HTTP and botocore's own ``ContainerProvider``.
"""

from __future__ import annotations

import datetime
import itertools
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.credentials import ContainerProvider, RefreshableCredentials

from keyless import ConfigError, Keyless
from keyless.audit import AuditLog, MemorySink
from keyless.clock import FakeClock
from keyless.delivery import TokenDirectory
from keyless.delivery.credential_server import (
    CREDENTIALS_PATH,
    CredentialServer,
    served_expiration,
)
from keyless.errors import ExchangeFailed

ROLE = "arn:aws:iam::123456789012:role/trainer"


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Sets:
    """Numbered credential sets; each refresh hands out the next, expiring ``life`` s later."""

    def __init__(self, life: float) -> None:
        self.life = life
        self.counter = itertools.count(1)
        self.expiries: dict[str, float] = {}

    def __call__(self) -> dict[str, Any]:
        n = next(self.counter)
        expiry = time.time() + self.life
        key = f"ASIAKEYLESSTEST{n:05d}"
        self.expiries[key] = expiry
        return {"access_key": key, "secret_key": f"secret-{n}", "token": f"session-{n}",
                "expiry_time": _iso(expiry)}


def refreshable(refresh: Callable[[], dict[str, Any]]) -> RefreshableCredentials:
    return RefreshableCredentials.create_from_metadata(refresh(), refresh_using=refresh,
                                                       method="test")


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def identity(sink: MemorySink) -> Keyless:
    config = {"source": {"type": "env"}, "target": {"aws": {"role_arn": ROLE,
                                                            "region": "eu-west-1"}}}
    return Keyless(config, clock=FakeClock(time.time()), environ={},
                   audit=AuditLog([sink]))


@pytest.fixture
def directory() -> Iterator[TokenDirectory]:
    d = TokenDirectory()
    yield d
    d.cleanup()


def serve(identity: Keyless, directory: TokenDirectory, credentials: Any) -> CredentialServer:
    return CredentialServer(identity, token_dir=directory, credentials=credentials).start()


def get(server: CredentialServer, headers: dict[str, str] | None = None,
        path: str = CREDENTIALS_PATH) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=10) as client:
        return client.get(f"http://127.0.0.1:{server.port}{path}", headers=headers or {})


def token_of(server: CredentialServer) -> str:
    return Path(server.env()["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]).read_text()


# ---------------------------------------------------------------------------- margin

@pytest.mark.parametrize(("remaining", "margin"), [
    (3600.0, 300.0),      # long sessions: 5 minutes
    (1200.0, 300.0),      # exactly where 25 % reaches 5 minutes
    (900.0, 225.0),       # shorter: a quarter of what is left
    (12.0, 3.0),
    (0.0, 0.0),
])
def test_served_expiration_is_a_margin_before_the_real_one(remaining: float,
                                                           margin: float) -> None:
    now = 1_700_000_000.0
    assert served_expiration(now + remaining, now) == pytest.approx(now + remaining - margin)


def test_served_expiration_is_never_in_the_past() -> None:
    assert served_expiration(100.0, 200.0) == 200.0


# ---------------------------------------------------------------------------- auth

def test_env_names_url_and_private_token_file_never_the_token(
        identity: Keyless, directory: TokenDirectory) -> None:
    with serve(identity, directory, refreshable(Sets(3600))) as server:
        env = server.env()
        assert set(env) == {"AWS_CONTAINER_CREDENTIALS_FULL_URI",
                            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"}
        assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == \
            f"http://127.0.0.1:{server.port}{CREDENTIALS_PATH}"
        token_file = Path(env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"])
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text()
        assert len(token) >= 32 and "\n" not in token
        assert all(token not in value for value in env.values())
        assert token not in repr(server.__dict__)
    assert not token_file.exists(), "stop() must remove the token file"


def test_missing_authorization_is_401_and_wrong_is_403(identity: Keyless,
                                                       directory: TokenDirectory) -> None:
    with serve(identity, directory, refreshable(Sets(3600))) as server:
        missing = get(server)
        assert missing.status_code == 401
        assert missing.json()["code"] == "Unauthorized"
        wrong = get(server, {"Authorization": token_of(server) + "x"})
        assert wrong.status_code == 403
        assert "AccessKeyId" not in wrong.text and "secret-" not in wrong.text
        assert get(server, {"Authorization": token_of(server)}, path="/").status_code == 404


def test_two_servers_have_different_tokens(identity: Keyless, directory: TokenDirectory,
                                           tmp_path: Path) -> None:
    other_dir = TokenDirectory(tmp_path / "other")
    with serve(identity, directory, refreshable(Sets(3600))) as one, \
            serve(identity, other_dir, refreshable(Sets(3600))) as two:
        assert token_of(one) != token_of(two)
        assert get(one, {"Authorization": token_of(two)}).status_code == 403


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.com", ""])
def test_non_loopback_bind_is_refused(identity: Keyless, directory: TokenDirectory,
                                      host: str) -> None:
    with pytest.raises(ConfigError) as info:
        CredentialServer(identity, host=host, token_dir=directory)
    assert "loopback" in str(info.value) and "fix:" in str(info.value)


# ---------------------------------------------------------------------------- the document

def test_document_format_and_margin(identity: Keyless, directory: TokenDirectory,
                                    sink: MemorySink) -> None:
    sets = Sets(3600)
    with serve(identity, directory, refreshable(sets)) as server:
        response = get(server, {"Authorization": token_of(server)})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == {"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}
    assert body["SecretAccessKey"] == "secret-1" and body["Token"] == "session-1"
    real = sets.expiries[body["AccessKeyId"]]
    assert body["Expiration"] == _iso(served_expiration(real, identity.clock.time()))
    assert body["Expiration"].endswith("Z")
    # one audit event for the set, by fingerprint: no key, no secret
    events = sink.events
    assert [(e.kind, e.target, e.principal) for e in events] == [("issue", "aws-endpoint", ROLE)]
    assert "secret-1" not in events[0].to_json() and body["AccessKeyId"] not in events[0].to_json()


def test_botocore_container_provider_reads_the_endpoint(identity: Keyless,
                                                        directory: TokenDirectory) -> None:
    sets = Sets(3600)
    with serve(identity, directory, refreshable(sets)) as server:
        provider = ContainerProvider(environ=server.env())
        credentials = provider.load()
        assert credentials is not None
        frozen = credentials.get_frozen_credentials()
        assert frozen.access_key in sets.expiries
        assert frozen.secret_key == "secret-1" and frozen.token == "session-1"
        expiry = credentials._expiry_time.timestamp()  # type: ignore[attr-defined]
        real = sets.expiries[frozen.access_key]
        assert int(served_expiration(real, identity.clock.time())) == int(expiry)
        assert real - expiry >= 299


def test_one_audit_event_per_credential_set_not_per_request(
        identity: Keyless, directory: TokenDirectory, sink: MemorySink) -> None:
    # 60 s sets sit inside botocore's mandatory window: every access refreshes (a new set)
    short = Sets(60)
    with serve(identity, directory, refreshable(short)) as server:
        keys = [get(server, {"Authorization": token_of(server)}).json()["AccessKeyId"]
                for _ in range(3)]
    assert len(set(keys)) == 3
    assert len(sink.events) == 3
    sink_long = MemorySink()
    identity_long = Keyless(identity.config, clock=identity.clock, environ={},
                            audit=AuditLog([sink_long]))
    with serve(identity_long, directory, refreshable(Sets(3600))) as server:
        keys = [get(server, {"Authorization": token_of(server)}).json()["AccessKeyId"]
                for _ in range(3)]
    assert len(set(keys)) == 1
    assert len(sink_long.events) == 1


def _failing(error: Exception) -> RefreshableCredentials:
    sets = Sets(60)  # always inside the mandatory window: every access refreshes

    def refresh() -> dict[str, Any]:
        if next(calls) > 0:
            raise error
        return sets()

    calls = itertools.count()
    return refreshable(refresh)


def test_keyless_error_is_500_with_code_and_message(identity: Keyless,
                                                    directory: TokenDirectory) -> None:
    error = ExchangeFailed("aws-sts: throttled; fix: retry later", retryable=True)
    with serve(identity, directory, _failing(error)) as server:
        response = get(server, {"Authorization": token_of(server)})
    assert response.status_code == 500
    assert response.json() == {
        "code": "ExchangeFailed",
        "message": "credential-server: aws-sts: throttled; fix: retry later"}


def test_other_error_is_500_with_type_name_only(identity: Keyless,
                                                directory: TokenDirectory) -> None:
    with serve(identity, directory, _failing(RuntimeError("leaky detail s3cr3t"))) as server:
        response = get(server, {"Authorization": token_of(server)})
    assert response.status_code == 500
    assert response.json()["code"] == "InternalError"
    assert "RuntimeError" in response.json()["message"]
    assert "s3cr3t" not in response.text


def test_request_headers_are_never_logged(identity: Keyless, directory: TokenDirectory,
                                          caplog: pytest.LogCaptureFixture,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level("DEBUG")
    with serve(identity, directory, refreshable(Sets(3600))) as server:
        token = token_of(server)
        get(server, {"Authorization": token})
        get(server, {"Authorization": "wrong-token-value"})
    out = capfd.readouterr()
    for text in (caplog.text, out.out, out.err):
        assert token not in text and "wrong-token-value" not in text and "secret-1" not in text


def test_ipv6_loopback(identity: Keyless, directory: TokenDirectory) -> None:
    try:
        server = CredentialServer(identity, host="::1", token_dir=directory,
                                  credentials=refreshable(Sets(3600))).start()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with server:
        assert server.url.startswith("http://[::1]:")
        with httpx.Client(trust_env=False, timeout=10) as client:
            response = client.get(server.url, headers={"Authorization": token_of(server)})
        assert response.status_code == 200


def test_token_dir_listing_holds_only_the_token_file(identity: Keyless,
                                                     directory: TokenDirectory) -> None:
    with serve(identity, directory, refreshable(Sets(3600))):
        assert os.listdir(directory.path) == ["aws-container-authorization-token"]
