"""HTTP sources without OAuth: GitHub Actions and the GCP metadata server (httpx.MockTransport)."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from keyless.config import GcpMetadataSource, GithubActionsSource
from keyless.errors import SourceMisconfigured, SourceUnavailable
from keyless.sources import GcpMetadataTokenSource, GithubActionsTokenSource
from tests.core import helpers
from tests.core.helpers import Recorder

NOW = 1_700_000_000
REQUEST_TOKEN = "gh-request-bearer-secret-value-42"
Handler = Callable[[httpx.Request], httpx.Response]


def make_jwt(**claims: object) -> str:
    defaults: dict[str, object] = {"iss": "https://issuer.example", "sub": "worker", "aud": "aud-1"}
    return helpers.make_jwt(3600, now=NOW, **{**defaults, **claims})




# ----------------------------------------------------------------------------- GitHub

GH_ENV = {
    "GITHUB_ACTIONS": "true",
    "ACTIONS_ID_TOKEN_REQUEST_URL": "https://pipelines.actions.example/idtoken/abc?api-version=2.0",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN": REQUEST_TOKEN,
}


def _gh_answer(request: httpx.Request) -> httpx.Response:
    aud = parse_qs(urlsplit(str(request.url)).query).get("audience", ["default-owner"])[0]
    return httpx.Response(200, json={"count": 1, "value": make_jwt(aud=aud)})


def test_github_sends_bearer_and_encoded_audience() -> None:
    rec = Recorder(_gh_answer)
    source = GithubActionsTokenSource(http=rec.http, environ=GH_ENV)
    got = source.fetch("https://sts.example/a b?x=1&y")
    assert got is not None and got.audience == ["https://sts.example/a b?x=1&y"]
    (request,) = rec.requests
    assert request.method == "GET"
    assert request.headers["Authorization"] == f"Bearer {REQUEST_TOKEN}"
    assert request.url.raw_path.decode().endswith(
        "?api-version=2.0&audience=https%3A%2F%2Fsts.example%2Fa%20b%3Fx%3D1%26y")
    assert got.origin == "github_actions"


def test_github_caller_audience_wins_and_no_audience_sends_none() -> None:
    rec = Recorder(_gh_answer)
    spec = GithubActionsTokenSource(GithubActionsSource(audience="spec-aud"), http=rec.http,
                                    environ=GH_ENV)
    spec.fetch("caller-aud")
    spec.fetch(None)
    GithubActionsTokenSource(http=rec.http, environ=GH_ENV).fetch(None)
    first, second, third = (parse_qs(urlsplit(str(r.url)).query) for r in rec.requests)
    assert first["audience"] == ["caller-aud"] and second["audience"] == ["spec-aud"]
    assert "audience" not in third and third["api-version"] == ["2.0"]


def test_github_not_in_actions() -> None:
    rec = Recorder(_gh_answer)
    assert GithubActionsTokenSource(http=rec.http, environ={}, detect=True).fetch("a") is None
    with pytest.raises(SourceMisconfigured, match="id-token: write") as info:
        GithubActionsTokenSource(http=rec.http, environ={"GITHUB_ACTIONS": "true"}).fetch("a")
    assert "ACTIONS_ID_TOKEN_REQUEST_URL" in str(info.value)
    assert rec.requests == []


@pytest.mark.parametrize("status,error", [(503, SourceUnavailable), (429, SourceUnavailable),
                                          (403, SourceMisconfigured)])
def test_github_error_mapping(status: int, error: type[Exception]) -> None:
    rec = Recorder(lambda r: httpx.Response(status, text=f"denied {REQUEST_TOKEN}"))
    source = GithubActionsTokenSource(http=rec.http, environ=GH_ENV)
    with pytest.raises(error) as info:
        source.fetch("aud")
    assert f"HTTP {status}" in str(info.value)
    helpers.assert_clean(str(info.value), REQUEST_TOKEN)
    helpers.assert_clean(repr(source), REQUEST_TOKEN)


def test_github_connection_error_is_transient() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(SourceUnavailable, match="cannot reach"):
        GithubActionsTokenSource(http=Recorder(refuse).http, environ=GH_ENV).fetch("aud")


def test_github_answer_without_value() -> None:
    rec = Recorder(lambda r: httpx.Response(200, json={"count": 0}))
    with pytest.raises(SourceMisconfigured, match="value"):
        GithubActionsTokenSource(http=rec.http, environ=GH_ENV).fetch("aud")


# ----------------------------------------------------------------------------- GCP metadata

def _metadata(request: httpx.Request) -> httpx.Response:
    headers = {"Metadata-Flavor": "Google"}
    if request.headers.get("Metadata-Flavor") != "Google":
        return httpx.Response(403, headers=headers, text="Missing Metadata-Flavor")
    if request.url.path == "/computeMetadata/v1/":
        return httpx.Response(200, headers=headers, text="instance/\n")
    query = parse_qs(request.url.query.decode())
    return httpx.Response(200, headers=headers, text=make_jwt(aud=query["audience"][0]))


def test_gcp_request_shape_and_default_host() -> None:
    rec = Recorder(_metadata)
    got = GcpMetadataTokenSource(http=rec.http, environ={}).fetch("https://aud.example/x")
    assert got is not None and got.audience == ["https://aud.example/x"]
    (request,) = rec.requests
    assert request.url.scheme == "http"
    assert request.url.host == "metadata.google.internal"
    assert request.url.path == (
        "/computeMetadata/v1/instance/service-accounts/default/identity")
    assert parse_qs(request.url.query.decode()) == {
        "audience": ["https://aud.example/x"], "format": ["full"]}
    assert request.headers["Metadata-Flavor"] == "Google"
    assert got.origin == "gcp_metadata:metadata.google.internal"


def test_gcp_host_precedence_and_spec_audience() -> None:
    rec = Recorder(_metadata)
    env = {"GCE_METADATA_HOST": "169.254.169.254:8080"}
    GcpMetadataTokenSource(http=rec.http, environ=env).fetch("a")
    spec = GcpMetadataTokenSource(GcpMetadataSource(metadata_host="127.0.0.1:9",
                                                    audience="spec"), http=rec.http, environ=env)
    spec.fetch("caller")
    spec.fetch(None)
    first, second, third = rec.requests
    assert (first.url.host, first.url.port) == ("169.254.169.254", 8080)
    assert (second.url.host, second.url.port) == ("127.0.0.1", 9)
    assert parse_qs(second.url.query.decode())["audience"] == ["caller"]
    assert parse_qs(third.url.query.decode())["audience"] == ["spec"]


def test_gcp_audience_required() -> None:
    rec = Recorder(_metadata)
    with pytest.raises(SourceMisconfigured, match="audience"):
        GcpMetadataTokenSource(http=rec.http, environ={}).fetch(None)
    assert rec.requests == []


def test_gcp_detect_probe_failure_means_not_here() -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("no route", request=request)

    rec = Recorder(unreachable)
    source = GcpMetadataTokenSource(http=rec.http, environ={}, detect=True, probe_timeout=0.2)
    assert source.fetch("aud") is None
    (probe,) = rec.requests
    assert probe.extensions["timeout"]["connect"] == 0.2


def test_gcp_detect_needs_google_flavor() -> None:
    rec = Recorder(lambda r: httpx.Response(200, text="some other server"))
    assert GcpMetadataTokenSource(http=rec.http, environ={}, detect=True).fetch("a") is None


def test_gcp_detect_then_fetch() -> None:
    rec = Recorder(_metadata)
    got = GcpMetadataTokenSource(http=rec.http, environ={}, detect=True).fetch("aud-x")
    assert got is not None and got.audience == ["aud-x"]
    assert rec.requests[0].url.path == "/computeMetadata/v1/"


@pytest.mark.parametrize("status,error", [(500, SourceUnavailable), (503, SourceUnavailable),
                                          (404, SourceMisconfigured)])
def test_gcp_error_mapping(status: int, error: type[Exception]) -> None:
    rec = Recorder(lambda r: httpx.Response(status, headers={"Metadata-Flavor": "Google"}))
    with pytest.raises(error, match=f"HTTP {status}"):
        GcpMetadataTokenSource(http=rec.http, environ={}).fetch("aud")


def test_gcp_unreachable_when_configured_is_transient() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(SourceUnavailable):
        GcpMetadataTokenSource(http=Recorder(refuse).http, environ={}).fetch("aud")
