"""The `aws_web_identity_token` source (STS GetWebIdentityToken through botocore, answered by
botocore's own Stubber) and the `spiffe` source (Workload API client injected: no SPIRE agent
can run here)."""

from __future__ import annotations

import datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from keyless.config import AwsWebIdentityTokenSource, SpiffeSource, load_config
from keyless.errors import SourceMisconfigured, SourceUnavailable
from keyless.sources import AwsWebIdentityTokenSourceImpl, SpiffeTokenSource, build_source
from tests.core.helpers import make_jwt


def sts_stub() -> tuple[Any, Stubber]:
    client = boto3.session.Session().client(
        "sts", region_name="us-east-1", aws_access_key_id="AKIAEXAMPLE000000000",
        aws_secret_access_key="x")
    return client, Stubber(client)


def test_config_and_factory_build_both_sources() -> None:
    base = {"target": {"aws": {"role_arn": "arn:aws:iam::123456789012:role/r"}}}
    aws = load_config({**base, "source": {"type": "aws_web_identity_token",
                                          "audience": "https://gcp.example"}})
    assert isinstance(build_source(aws.source), AwsWebIdentityTokenSourceImpl)
    spiffe = load_config({**base, "source": {"type": "spiffe", "audience": "sts.amazonaws.com"}})
    assert isinstance(build_source(spiffe.source), SpiffeTokenSource)


def test_get_web_identity_token_request_and_token() -> None:
    client, stub = sts_stub()
    jwt = make_jwt(300, aud="https://gcp.example", iss="https://sts.example")
    stub.add_response("get_web_identity_token",
                      {"WebIdentityToken": jwt,
                       "Expiration": datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)},
                      expected_params={"Audience": ["https://gcp.example"],
                                       "SigningAlgorithm": "ES384", "DurationSeconds": 600,
                                       "Tags": [{"Key": "team", "Value": "ml"}]})
    spec = AwsWebIdentityTokenSource(signing_algorithm="ES384", duration_seconds=600,
                                     tags={"team": "ml"})
    with stub:
        token = AwsWebIdentityTokenSourceImpl(spec, client=lambda: client).fetch(
            "https://gcp.example")
    assert token.token.reveal() == jwt and token.audience == ["https://gcp.example"]
    stub.assert_no_pending_responses()


@pytest.mark.parametrize(("code", "status", "error"), [
    ("AccessDenied", 403, SourceMisconfigured),
    ("ValidationError", 400, SourceMisconfigured),
    ("Throttling", 400, SourceUnavailable),
    ("InternalFailure", 500, SourceUnavailable),
])
def test_sts_errors_map_to_typed_errors(code: str, status: int, error: type[Exception]) -> None:
    client, stub = sts_stub()
    stub.add_client_error("get_web_identity_token", service_error_code=code,
                          service_message="detail", http_status_code=status)
    source = AwsWebIdentityTokenSourceImpl(AwsWebIdentityTokenSource(audience="a"),
                                           client=lambda: client)
    with stub, pytest.raises(error) as info:
        source.fetch(None)
    assert str(info.value).startswith("source aws_web_identity_token:")
    assert code in str(info.value)


def test_aws_source_without_audience_is_misconfigured() -> None:
    source = AwsWebIdentityTokenSourceImpl(AwsWebIdentityTokenSource(), client=lambda: None)
    with pytest.raises(SourceMisconfigured):
        source.fetch(None)


class FakeWorkloadApi:
    """Stands in for the SPIRE agent (none can run here): records audiences asked for."""

    def __init__(self, token: str | None = None, error: Exception | None = None) -> None:
        self.token = token
        self.error = error
        self.asked: list[set[str]] = []

    def fetch_jwt_svid(self, audience: set[str]) -> Any:
        self.asked.append(audience)
        if self.error is not None:
            raise self.error
        return type("JwtSvid", (), {"token": self.token})()


def test_spiffe_fetches_a_jwt_svid_for_the_audience() -> None:
    jwt = make_jwt(300, sub="spiffe://example.org/trainer", aud="sts.amazonaws.com")
    api = FakeWorkloadApi(jwt)
    source = SpiffeTokenSource(SpiffeSource(), client=lambda: api)
    token = source.fetch("sts.amazonaws.com")
    assert token.subject == "spiffe://example.org/trainer"
    assert api.asked == [{"sts.amazonaws.com"}]


def test_spiffe_agent_failure_is_unavailable_without_detail() -> None:
    api = FakeWorkloadApi(error=RuntimeError("socket detail s3cr3t"))
    source = SpiffeTokenSource(SpiffeSource(audience="a"), client=lambda: api)
    with pytest.raises(SourceUnavailable) as info:
        source.fetch(None)
    assert "RuntimeError" in str(info.value) and "s3cr3t" not in str(info.value)


def test_spiffe_without_the_package_says_how_to_install() -> None:
    import importlib.util

    if importlib.util.find_spec("spiffe") is None:
        source = SpiffeTokenSource(SpiffeSource(audience="a"))
        with pytest.raises(SourceMisconfigured) as info:
            source.fetch(None)
        assert "pip install" in str(info.value)
    else:  # pragma: no cover - the package is not in the dev env
        pytest.skip("spiffe is installed")
