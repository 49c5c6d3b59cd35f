"""``keyless doctor`` as a real subprocess against the reference IdP and the AWS stack.

Issue 8 (doctor). Every token doctor sees is registered with :func:`leak_guard`: its output must
never contain one. Tokens the reference IdP cannot produce (expired, issued in the future, from
another issuer) come from :class:`LoopbackIssuer`: a tiny discovery + JWKS server on loopback
with its own RSA key and an HTTP ``Date`` header the test controls.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from keyless import FakeClock
from keyless.delivery.loopback import QuietHandler
from keyless.verify.doctor import CHECK_NAMES, Check, diagnose
from tests.e2e.conftest import Federation, LeakGuard
from tests.support.idp import ReferenceIdP

pytestmark = pytest.mark.e2e

AUD = "sts.amazonaws.com"


class LoopbackIssuer:
    """Discovery + JWKS on 127.0.0.1; ``date_offset`` shifts its ``Date`` header."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid="loopback-1", alg="RS256", use="sig")
        self.jwks = {"keys": [jwk]}
        self.date_offset = 0.0
        issuer = self

        class Handler(QuietHandler):
            def date_time_string(self, timestamp: float | None = None) -> str:
                return formatdate(time.time() + issuer.date_offset, usegmt=True)

            def do_GET(self) -> None:
                body: dict[str, Any]
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks",
                            "id_token_signing_alg_values_supported": ["RS256"]}
                elif self.path == "/jwks":
                    body = issuer.jwks
                else:
                    self.send_error(404)
                    return
                self.send_json(200, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"iss": self.url, "aud": AUD, "sub": "trainer",
                                   "iat": now, "exp": now + 300}
        payload.update(claims)
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": "loopback-1"})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def loopback_issuer() -> Iterator[LoopbackIssuer]:
    issuer = LoopbackIssuer()
    yield issuer
    issuer.close()


def doctor(leak_guard: LeakGuard, *args: str) -> tuple[int, str, dict[str, Check]]:
    """Run ``python -m keyless doctor ARGS``; the exit code, its output, checks by name."""
    result = subprocess.run([sys.executable, "-m", "keyless", "doctor", *args],
                            capture_output=True, text=True, timeout=120, check=False)
    leak_guard.add(result.stdout, result.stderr)
    checks: dict[str, Check] = {}
    for line in result.stdout.splitlines():
        status, _, rest = line.partition(" ")
        name, _, detail = rest.strip().partition(" ")
        if status in ("ok", "FAIL", "warn", "skip"):
            checks[name] = Check(name, status, detail.strip())
    return result.returncode, result.stdout + result.stderr, checks


def token_file(tmp_path: Path, token: str, leak_guard: LeakGuard) -> str:
    leak_guard.forbid(token, token.split(".")[1], token.split(".")[2])
    path = tmp_path / "token.jwt"
    path.write_text(token)
    return str(path)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _failed(checks: dict[str, Check]) -> list[str]:
    return [name for name, check in checks.items() if check.status == "FAIL"]


# ----------------------------------------------------------------------------- good tokens

def test_a_good_token_file_passes(reference_idp: ReferenceIdP, tmp_path: Path,
                                  leak_guard: LeakGuard) -> None:
    path = token_file(tmp_path, reference_idp.issue("trainer", "https://sts.amazonaws.com"),
                      leak_guard)
    code, output, checks = doctor(leak_guard, "--token-file", path, "--audience", AUD,
                                  "--issuer", reference_idp.issuer, "--allow-insecure-http")
    assert code == 0, output
    for name in ("token", "discovery", "clock", "alg", "signature", "iss", "aud", "time",
                 "lifetime"):
        assert checks[name].status == "ok", output
    assert checks["exchange"].status == "skip"
    assert "ahead of the issuer" in checks["clock"].detail \
        or "behind the issuer" in checks["clock"].detail


def test_a_good_config_passes_including_the_aws_exchange(federation: Federation,
                                                         tmp_path: Path,
                                                         leak_guard: LeakGuard) -> None:
    config = federation.config(session_name="doctor-{pid}")
    path = tmp_path / "keyless.json"
    path.write_text(json.dumps(config))
    calls = federation.aws.front.calls
    code, output, _ = doctor(leak_guard, "--config", str(path), "--json")
    report, _ = json.JSONDecoder().raw_decode(output)  # stdout first, then stderr
    assert code == 0 and report["ok"] is True, output
    assert tuple(c["name"] for c in report["checks"]) == CHECK_NAMES  # each once, in order
    by_name = {c["name"]: c for c in report["checks"]}
    assert {c["status"] for c in report["checks"]} == {"ok"}, output
    assert "sts.amazonaws.com" in by_name["aud"]["detail"]
    session_name = federation.aws.front.accepted[-1]["session_name"]
    assert session_name.startswith("doctor-") and session_name[7:].isdigit()
    assert f"session name {session_name!r}" in by_name["exchange"]["detail"]
    assert federation.aws.front.calls - calls == 1


def test_a_config_whose_role_does_not_trust_the_token_fails_on_the_exchange(
        federation: Federation, tmp_path: Path, leak_guard: LeakGuard) -> None:
    path = tmp_path / "keyless.json"
    path.write_text(json.dumps(federation.config("intruder")))
    code, output, checks = doctor(leak_guard, "--config", str(path))
    assert code == 1, output
    assert _failed(checks) == ["exchange"], output
    assert "sub='intruder'" in checks["exchange"].detail


# ----------------------------------------------------------------------------- bad tokens

def test_wrong_audience_fails_naming_aud(reference_idp: ReferenceIdP, tmp_path: Path,
                                         leak_guard: LeakGuard) -> None:
    path = token_file(tmp_path, reference_idp.issue("trainer", "https://sts.amazonaws.com"),
                      leak_guard)
    code, output, checks = doctor(leak_guard, "--token-file", path, "--allow-insecure-http",
                                  "--audience", "https://other.example")
    assert code == 1
    assert _failed(checks) == ["aud"], output
    assert "https://other.example" in checks["aud"].detail and "fix:" in checks["aud"].detail


def test_expired_token_fails_naming_exp(loopback_issuer: LoopbackIssuer, tmp_path: Path,
                                        leak_guard: LeakGuard) -> None:
    now = int(time.time())
    path = token_file(tmp_path, loopback_issuer.token(iat=now - 900, exp=now - 300),
                      leak_guard)
    code, output, checks = doctor(leak_guard, "--token-file", path, "--audience", AUD,
                                  "--allow-insecure-http")
    assert code == 1
    assert _failed(checks) == ["time"], output
    assert "expired" in checks["time"].detail and "fix:" in checks["time"].detail
    assert checks["signature"].status == "ok"


def test_expired_reference_token_with_a_late_clock(reference_idp: ReferenceIdP,
                                                   leak_guard: LeakGuard) -> None:
    """The library entry point with its clock hook: a real IdP token, judged after its exp."""
    token = reference_idp.issue("trainer", "https://sts.amazonaws.com")
    leak_guard.forbid(token)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    checks = {c.name: c for c in diagnose(
        token, token_origin="test", audience=AUD, clock=FakeClock(exp + 120.0),
        allow_insecure_http=True)}
    assert checks["time"].status == "FAIL" and "expired 120 s ago" in checks["time"].detail
    assert checks["signature"].status == "ok"
    leak_guard.add(*(c.line() for c in checks.values()))


def test_a_token_from_another_issuer_fails_on_iss_and_signature(
        reference_idp: ReferenceIdP, loopback_issuer: LoopbackIssuer, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    path = token_file(tmp_path, loopback_issuer.token(), leak_guard)
    code, output, checks = doctor(leak_guard, "--token-file", path, "--audience", AUD,
                                  "--issuer", reference_idp.issuer, "--allow-insecure-http")
    assert code == 1
    assert set(_failed(checks)) == {"signature", "iss"}, output
    assert loopback_issuer.url in checks["iss"].detail
    assert "kid='loopback-1'" in checks["signature"].detail


def test_tampered_signature_fails_naming_signature(reference_idp: ReferenceIdP,
                                                   tmp_path: Path,
                                                   leak_guard: LeakGuard) -> None:
    genuine = reference_idp.issue("trainer", "https://sts.amazonaws.com")
    header, _, signature = genuine.split(".")
    claims = jwt.decode(genuine, options={"verify_signature": False})
    claims["sub"] = "admin"
    leak_guard.forbid(genuine)
    path = token_file(tmp_path, f"{header}.{_b64(claims)}.{signature}", leak_guard)
    code, output, checks = doctor(leak_guard, "--token-file", path, "--audience", AUD,
                                  "--allow-insecure-http")
    assert code == 1
    assert _failed(checks) == ["signature"], output
    assert "signature does not verify" in checks["signature"].detail


def test_alg_none_fails_naming_alg(reference_idp: ReferenceIdP, tmp_path: Path,
                                   leak_guard: LeakGuard) -> None:
    genuine = reference_idp.issue("trainer", "https://sts.amazonaws.com")
    leak_guard.forbid(genuine)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    path = tmp_path / "token.jwt"
    path.write_text(unsigned)
    leak_guard.forbid(unsigned.split(".")[1])
    code, output, checks = doctor(leak_guard, "--token-file", str(path), "--audience", AUD,
                                  "--allow-insecure-http")
    assert code == 1
    assert _failed(checks) == ["alg"], output
    assert "'none'" in checks["alg"].detail and checks["signature"].status == "skip"


def test_iat_in_the_future_fails_naming_clock_skew(loopback_issuer: LoopbackIssuer,
                                                   tmp_path: Path,
                                                   leak_guard: LeakGuard) -> None:
    """The issuer's clock runs 10 minutes ahead: its Date header and its iat say so."""
    loopback_issuer.date_offset = 600.0
    now = int(time.time())
    path = token_file(tmp_path, loopback_issuer.token(iat=now + 600, exp=now + 1200),
                      leak_guard)
    code, output, checks = doctor(leak_guard, "--token-file", path, "--audience", AUD,
                                  "--allow-insecure-http")
    assert code == 1
    assert set(_failed(checks)) == {"clock", "time"}, output
    assert "behind the issuer" in checks["clock"].detail
    assert "clock skew" in checks["time"].detail and "iat=" in checks["time"].detail
    assert "s off the issuer's Date header" in checks["time"].detail


def test_discovery_not_answering_fails_naming_the_url(reference_idp: ReferenceIdP,
                                                      tmp_path: Path,
                                                      leak_guard: LeakGuard) -> None:
    with socket.socket() as sock:  # a loopback port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = token_file(tmp_path, reference_idp.issue("trainer", "https://sts.amazonaws.com"),
                      leak_guard)
    code, output, checks = doctor(leak_guard, "--token-file", path, "--audience", AUD,
                                  "--issuer", f"http://127.0.0.1:{port}",
                                  "--allow-insecure-http")
    assert code == 1
    assert "discovery" in _failed(checks), output
    detail = checks["discovery"].detail
    assert f"http://127.0.0.1:{port}/.well-known/openid-configuration" in detail
    assert "fix:" in detail and checks["signature"].status == "skip"


def test_http_issuer_without_opt_in_fails_discovery(reference_idp: ReferenceIdP,
                                                    tmp_path: Path,
                                                    leak_guard: LeakGuard) -> None:
    path = token_file(tmp_path, reference_idp.issue("trainer", "https://sts.amazonaws.com"),
                      leak_guard)
    code, output, checks = doctor(leak_guard, "--token-file", path, "--audience", AUD)
    assert code == 1 and checks["discovery"].status == "FAIL", output
    assert "https://" in checks["discovery"].detail


# ----------------------------------------------------------------------------- usage

def test_bad_usage_and_unreadable_config_exit_2(tmp_path: Path, leak_guard: LeakGuard,
                                                reference_idp: ReferenceIdP) -> None:
    code, output, _ = doctor(leak_guard)
    assert code == 2 and "--config" in output
    code, output, _ = doctor(leak_guard, "--config", "a.yaml", "--token-file", "t")
    assert code == 2
    code, output, _ = doctor(leak_guard, "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml" in output
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: {type: nope}\n")
    code, output, _ = doctor(leak_guard, "--config", str(bad))
    assert code == 2


def test_missing_token_file_fails_the_token_check(tmp_path: Path, leak_guard: LeakGuard,
                                                  reference_idp: ReferenceIdP) -> None:
    code, output, checks = doctor(leak_guard, "--token-file", str(tmp_path / "nope"))
    assert code == 1 and checks["token"].status == "FAIL", output
    assert "cannot read it" in checks["token"].detail
