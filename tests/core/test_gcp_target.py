"""GcpExchange with an injected google-auth transport and a fake clock: refresh schedule,
single flight, error mapping, delivery document, audit."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest

from keyless import ConfigError, ExchangeFailed, FakeClock, TokenRejected, WorkerContext
from keyless.audit import AuditLog, MemorySink
from keyless.config import GcpTarget, load_config
from keyless.refresher import RefreshPolicy
from keyless.targets.gcp import GcpExchange
from keyless.tokens import SubjectToken
from tests.core.helpers import make_jwt

PROVIDER = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x"
SA = "sa@proj.iam.gserviceaccount.com"
STS = "https://sts.example.test/v1/token"


class Response:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status, self.headers, self.data = status, {}, json.dumps(body).encode()


class FakeGoogle:
    """A google-auth transport: answers STS and generateAccessToken, records calls."""

    def __init__(self, lifetime: int = 1000) -> None:
        self.lifetime = lifetime
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.next: list[Response | Exception] = []
        self.lock = threading.Lock()
        self.gate: threading.Event | None = None

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: Any = None, **kwargs: Any) -> Response:
        if self.gate is not None:
            self.gate.wait(10)
        form = dict(parse_qsl(body.decode())) if url == STS else json.loads(body or b"{}")
        with self.lock:
            self.calls.append((url, form))
            n = len(self.calls)
            planned = self.next.pop(0) if self.next else None
        if isinstance(planned, Exception):
            raise planned
        if planned is not None:
            return planned
        if url == STS:
            return Response(200, {"access_token": f"sts-{n}", "expires_in": self.lifetime,
                                  "token_type": "Bearer"})
        expire = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.lifetime)
        return Response(200, {"accessToken": f"sa-{n}",
                              "expireTime": expire.strftime("%Y-%m-%dT%H:%M:%SZ")})


class Tokens:
    def __init__(self) -> None:
        self.audiences: list[str] = []
        self.raw = make_jwt(3600, aud="https:" + PROVIDER, sub="worker-3")

    def __call__(self, audience: str) -> SubjectToken:
        self.audiences.append(audience)
        return SubjectToken.from_jwt(self.raw, "test")


def exchange(transport: FakeGoogle, clock: FakeClock | None = None, sink: MemorySink | None = None,
             **target: Any) -> tuple[GcpExchange, Tokens]:
    tokens = Tokens()
    spec = GcpTarget(audience=PROVIDER, token_url=STS, **target)
    return GcpExchange(spec, tokens=tokens, source_name="file", context=WorkerContext(rank="3"),
                       policy=RefreshPolicy(at_fraction=0.5, jitter_fraction=0.0),
                       audit=AuditLog([sink] if sink else []), environ={},
                       clock=clock or FakeClock(), request=transport), tokens


def test_subject_audience_defaults_to_the_provider_resource_name() -> None:
    ex, tokens = exchange(FakeGoogle())
    ex.access_token()
    assert tokens.audiences == ["https:" + PROVIDER]
    url, form = ex._request.calls[0]
    assert url == STS and form["audience"] == PROVIDER
    assert form["subject_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert form["scope"] == "https://www.googleapis.com/auth/cloud-platform"


def test_refreshes_at_the_configured_fraction_not_googles_skew() -> None:
    clock, transport = FakeClock(), FakeGoogle(lifetime=1000)
    ex, _ = exchange(transport, clock)
    first, expires = ex.access_token()
    assert expires == pytest.approx(clock.time() + 1000, abs=2)
    clock.advance(400)
    assert ex.access_token()[0] == first and len(transport.calls) == 1
    clock.advance(200)
    assert ex.access_token()[0] != first and len(transport.calls) == 2


def test_concurrent_first_use_makes_one_exchange() -> None:
    transport = FakeGoogle()
    transport.gate = threading.Event()
    ex, _ = exchange(transport, service_account=SA)
    credentials = ex.credentials()
    seen: list[str] = []

    def use() -> None:
        headers: dict[str, str] = {}
        credentials.before_request(None, "GET", "https://storage.googleapis.com/x", headers)
        seen.append(headers["authorization"])

    threads = [threading.Thread(target=use) for _ in range(16)]
    for thread in threads:
        thread.start()
    transport.gate.set()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 1 and len(seen) == 16
    assert [url for url, _ in transport.calls] == [
        STS, f"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{SA}"
             ":generateAccessToken"]
    assert transport.calls[1][1]["lifetime"] == "3600s"


def test_credentials_state_and_forced_refresh() -> None:
    ex, _ = exchange(FakeGoogle())
    credentials = ex.credentials()
    assert credentials.token is None and not credentials.valid
    credentials.refresh(None)
    assert credentials.valid and credentials.token == "sts-1" and not credentials.expired
    credentials.refresh(None)  # not due: the caller saw it refused; force a new one
    assert credentials.token == "sts-2"


@pytest.mark.parametrize(("description", "claim"), [
    ("The audience in ID Token [https://x] does not match the expected audience.", "aud"),
    ("The issuer in ID Token http://a does not match the expected ones.", "iss"),
    ("ID Token expired at 1; the current time is 2.", "exp"),
    ("Invalid ID Token signature.", "signature"),
])
def test_sts_refusals_name_the_claim_without_the_token(description: str, claim: str) -> None:
    transport = FakeGoogle()
    transport.next = [Response(400, {"error": "invalid_grant", "error_description": description})]
    sink = MemorySink()
    ex, tokens = exchange(transport, sink=sink)
    with pytest.raises(TokenRejected) as info:
        ex.access_token()
    assert info.value.claim == claim and "fix:" in str(info.value)
    assert tokens.raw not in str(info.value) and "worker-3" in str(info.value)
    assert [e.kind for e in sink.events] == ["failure"]


@pytest.mark.parametrize("planned", [Response(503, {"error": "unavailable"}),
                                     Response(429, {"error": "rate"}), ConnectionError("boom")])
def test_outages_are_retryable(planned: Any) -> None:
    transport = FakeGoogle()
    transport.next = [planned]
    ex, _ = exchange(transport)
    with pytest.raises(ExchangeFailed) as info:
        ex.access_token()
    assert info.value.retryable and not isinstance(info.value, TokenRejected)


def test_impersonation_denied_names_sub() -> None:
    transport = FakeGoogle()
    transport.next = [Response(200, {"access_token": "sts", "expires_in": 100}),
                      Response(403, {"error": {"code": 403, "status": "PERMISSION_DENIED",
                                               "message": "Permission denied on resource"}})]
    ex, _ = exchange(transport, service_account=SA)
    with pytest.raises(TokenRejected) as info:
        ex.access_token()
    assert info.value.claim == "sub" and SA in str(info.value)


def test_audit_records_each_exchange_with_the_principal() -> None:
    clock, sink = FakeClock(), MemorySink()
    ex, _ = exchange(FakeGoogle(lifetime=100), clock, sink, service_account=SA)
    ex.access_token()
    clock.advance(60)
    ex.access_token()
    assert [(e.kind, e.principal, e.sub, e.target) for e in sink.events] == [
        ("exchange", SA, "worker-3", "gcp")] * 2


def test_external_account_document(tmp_path: Path) -> None:
    ex, _ = exchange(FakeGoogle(), service_account=SA, token_lifetime_seconds=900)
    token_file = tmp_path / "token.jwt"
    path = ex.write_external_account(token_file)
    assert path.parent == tmp_path and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    info = json.loads(path.read_text())
    assert info["credential_source"] == {"file": str(token_file), "format": {"type": "text"}}
    assert info["audience"] == PROVIDER and info["token_url"] == STS
    assert info["service_account_impersonation"] == {"token_lifetime_seconds": 900}
    assert info["service_account_impersonation_url"].endswith(f"{SA}:generateAccessToken")


def test_access_boundary_is_rendered_per_worker_and_checked() -> None:
    boundary = {"accessBoundaryRules": [{"availableResource": "//storage.googleapis.com/b",
                                         "availablePermissions": ["inRole:x"],
                                         "availabilityCondition": {"expression": "r{rank}"}}]}
    ex, _ = exchange(FakeGoogle(), access_boundary=boundary)
    rule = ex.boundary["accessBoundary"]["accessBoundaryRules"][0]  # type: ignore[index]
    assert rule["availabilityCondition"]["expression"] == "r3"
    with pytest.raises(ConfigError) as info:
        load_config({"source": {"type": "env"}, "target": {"gcp": {
            "audience": PROVIDER, "access_boundary": {"a": "{nope}"}}}})
    assert info.value.field == "target.gcp.access_boundary.a"
    with pytest.raises(ConfigError):
        exchange(FakeGoogle(), access_boundary={"accessBoundaryRules": []})


def test_downscoping_goes_to_the_configured_sts() -> None:
    transport = FakeGoogle()
    ex, _ = exchange(transport, access_boundary={"accessBoundaryRules": [
        {"availableResource": "//storage.googleapis.com/b",
         "availablePermissions": ["inRole:roles/storage.objectViewer"]}]})
    ex.access_token()
    assert [url for url, _ in transport.calls] == [STS, STS]
    options = json.loads(__import__("urllib.parse").parse.unquote(transport.calls[1][1]["options"]))
    assert options["accessBoundary"]["accessBoundaryRules"][0]["availableResource"] \
        == "//storage.googleapis.com/b"


def test_settings_google_auth_refuses_are_config_errors() -> None:
    ex, _ = exchange(FakeGoogle(), access_boundary={"accessBoundaryRules": [
        {"availableResource": "//storage.googleapis.com/b", "availablePermissions": ["x"]}]})
    with pytest.raises(ConfigError) as info:
        ex.access_token()
    assert "inRole" in str(info.value)
