"""Ambient detection order and the source factory."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

import keyless.sources as sources_pkg
from keyless.config import (
    AmbientSource,
    ClientCredentialsSource,
    CommandSource,
    EnvSource,
    FileSource,
    GcpMetadataSource,
    GithubActionsSource,
    GitlabSource,
    TokenExchangeSource,
    load_config,
)
from keyless.errors import SourceMisconfigured, SourceUnavailable
from keyless.sources import (
    DEFAULT_TOKEN_PATHS,
    AmbientTokenSource,
    ClientCredentialsTokenSource,
    CommandTokenSource,
    EnvTokenSource,
    FileTokenSource,
    GcpMetadataTokenSource,
    GithubActionsTokenSource,
    GitlabTokenSource,
    Source,
    TokenExchangeTokenSource,
    build_source,
)
from tests.core import helpers
from tests.core.helpers import Recorder

NOW = 1_700_000_000
GH_URL = "https://pipelines.actions.example/idtoken?api-version=2.0"
GH_BEARER = "gh-request-bearer-secret-value-42"


def make_jwt(**claims: object) -> str:
    defaults: dict[str, object] = {"iss": "https://issuer.example", "sub": "worker", "aud": "aud-1"}
    return helpers.make_jwt(3600, now=NOW, **{**defaults, **claims})




def cloud(gcp_here: bool) -> Callable[[httpx.Request], httpx.Response]:
    """GitHub's token service and (when ``gcp_here``) a metadata server."""

    def respond(request: httpx.Request) -> httpx.Response:
        query = parse_qs(request.url.query.decode())
        aud = query.get("audience", ["none"])[0]
        if request.url.host == "pipelines.actions.example":
            assert request.headers["Authorization"] == f"Bearer {GH_BEARER}"
            return httpx.Response(200, json={"value": make_jwt(sub="github", aud=aud)})
        if request.url.host == "metadata.google.internal" and gcp_here:
            flavor = {"Metadata-Flavor": "Google"}
            if request.url.path == "/computeMetadata/v1/":
                return httpx.Response(200, headers=flavor)
            return httpx.Response(200, headers=flavor, text=make_jwt(sub="gcp", aud=aud))
        raise httpx.ConnectError("no route to host", request=request)

    return respond


def test_default_token_paths() -> None:
    assert DEFAULT_TOKEN_PATHS == (
        "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
        "/var/run/secrets/azure/tokens/azure-identity-token",
        "/var/run/secrets/tokens/oidc",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
    )


def test_ambient_order(tmp_path: Path) -> None:
    def token_file(name: str) -> str:
        path = tmp_path / name
        path.write_text(make_jwt(sub=name))
        return str(path)

    environ = {
        "KEYLESS_OIDC_TOKEN_FILE": token_file("keyless"),
        "AWS_WEB_IDENTITY_TOKEN_FILE": token_file("aws"),
        "AZURE_FEDERATED_TOKEN_FILE": token_file("azure"),
        "ACTIONS_ID_TOKEN_REQUEST_URL": GH_URL,
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": GH_BEARER,
        "KEYLESS_ID_TOKEN": make_jwt(sub="gitlab"),
    }
    paths = [token_file("eks"), token_file("k8s")]
    rec = Recorder(cloud(gcp_here=True))
    source = AmbientTokenSource(http=rec.http, environ=environ, token_paths=paths)

    def winner() -> str | None:
        token = source.fetch("https://sts.example")
        assert token is not None
        return token.subject

    for expected, remove in [("keyless", "KEYLESS_OIDC_TOKEN_FILE"),
                             ("aws", "AWS_WEB_IDENTITY_TOKEN_FILE"),
                             ("azure", "AZURE_FEDERATED_TOKEN_FILE")]:
        assert winner() == expected
        del environ[remove]
    for expected, path in [("eks", paths[0]), ("k8s", paths[1])]:
        assert winner() == expected
        Path(path).unlink()
    assert rec.requests == []  # the chain stops at the first that applies: no HTTP so far
    assert winner() == "github"
    del environ["ACTIONS_ID_TOKEN_REQUEST_URL"]
    assert winner() == "gitlab"
    del environ["KEYLESS_ID_TOKEN"]
    assert winner() == "gcp"
    assert source.name == "ambient"


def test_ambient_nothing_here_lists_what_was_tried(tmp_path: Path) -> None:
    environ = {"AWS_WEB_IDENTITY_TOKEN_FILE": str(tmp_path / "gone"), "GITLAB_CI": "true",
               "CI_JOB_JWT_V2": make_jwt()}
    rec = Recorder(cloud(gcp_here=False))
    source = AmbientTokenSource(http=rec.http, environ=environ,
                                token_paths=[str(tmp_path / "k8s")])
    with pytest.raises(SourceUnavailable) as info:
        source.fetch("aud")
    message = str(info.value)
    assert message.startswith("source ambient:")
    for fact in ["$KEYLESS_OIDC_TOKEN_FILE (not set)",
                 f"$AWS_WEB_IDENTITY_TOKEN_FILE={tmp_path / 'gone'} (no such file)",
                 "$AZURE_FEDERATED_TOKEN_FILE (not set)", f"{tmp_path / 'k8s'} (no such file)",
                 "GitHub Actions", "KEYLESS_ID_TOKEN", "id_tokens", "GCP metadata server",
                 "configure the source explicitly"]:
        assert fact in message
    assert message.index("KEYLESS_OIDC_TOKEN_FILE") < message.index("AWS_WEB_IDENTITY") < \
        message.index("GitHub") < message.index("GitLab") < message.index("GCP")
    # the only HTTP was the metadata probe
    assert [r.url.host for r in rec.requests] == ["metadata.google.internal"]


def test_ambient_broken_detector_raises(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("")
    source = AmbientTokenSource(http=Recorder(cloud(False)).http,
                                environ={"KEYLESS_OIDC_TOKEN_FILE": str(empty)}, token_paths=[])
    with pytest.raises(SourceMisconfigured, match="empty"):
        source.fetch(None)


def test_ambient_caller_audience_wins_then_the_spec_audience() -> None:
    """keyless asks each target's own audience (source.audience already folded in where the
    target names none): the caller's wins; the spec's serves a caller that names none."""
    rec = Recorder(cloud(False))
    environ = {"ACTIONS_ID_TOKEN_REQUEST_URL": GH_URL, "ACTIONS_ID_TOKEN_REQUEST_TOKEN": GH_BEARER}
    source = AmbientTokenSource(AmbientSource(audience="spec-aud"), http=rec.http,
                                environ=environ, token_paths=[])
    token = source.fetch("caller-aud")
    assert token is not None and token.audience == ["caller-aud"]
    token = source.fetch(None)
    assert token is not None and token.audience == ["spec-aud"]
    assert GH_BEARER not in repr(source)


# ----------------------------------------------------------------------------- factory

@pytest.mark.parametrize("spec,cls", [
    (FileSource(path="/x"), FileTokenSource),
    (EnvSource(), EnvTokenSource),
    (GithubActionsSource(), GithubActionsTokenSource),
    (GitlabSource(), GitlabTokenSource),
    (GcpMetadataSource(audience="a"), GcpMetadataTokenSource),
    (ClientCredentialsSource(token_url="https://i/t", client_id="c", client_secret="s"),
     ClientCredentialsTokenSource),
    (CommandSource(command=[sys.executable, "-c", "pass"]), CommandTokenSource),
    (AmbientSource(), AmbientTokenSource),
    (TokenExchangeSource.model_validate({"subject": {"type": "env"}, "token_url": "https://x"}),
     TokenExchangeTokenSource),
])
def test_build_source_maps_each_type(spec: object, cls: type) -> None:
    source = build_source(spec)  # type: ignore[arg-type]
    assert type(source) is cls
    assert isinstance(source, Source)
    assert source.name == spec.type  # type: ignore[attr-defined]


def test_build_source_recurses_with_injected_deps() -> None:
    config = load_config({
        "source": {"type": "token_exchange", "token_url": "https://sts.example/token",
                   "subject": {"type": "token_exchange", "token_url": "https://mid.example/t",
                               "subject": {"type": "env", "variable": "ROOT_JWT"}},
                   "actor": {"type": "gitlab"}},
        "target": {"oauth2": {"token_url": "https://sts.example/token"}}})

    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": make_jwt(iss=str(request.url))})

    rec = Recorder(respond)
    environ = {"ROOT_JWT": make_jwt(sub="root"), "KEYLESS_ID_TOKEN": make_jwt(sub="actor")}
    source = build_source(config.source, http=rec.http, environ=environ)
    assert isinstance(source, TokenExchangeTokenSource)
    assert isinstance(source.subject_source, TokenExchangeTokenSource)
    assert isinstance(source.actor_source, GitlabTokenSource)
    token = source.fetch("final")
    assert token is not None and token.issuer == "https://sts.example/token"
    assert [r.url.host for r in rec.requests] == ["mid.example", "sts.example"]


def test_package_exports() -> None:
    for name in sources_pkg.__all__:
        assert hasattr(sources_pkg, name), name
    assert "build_source" in sources_pkg.__all__
