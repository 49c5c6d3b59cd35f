"""Property-based tests over what servers answer: whatever an IdP or a token-exchange server
sends back (any status, any body), keyless returns a token or raises a KeylessError, and the
error never carries the secrets and tokens that were sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyless import Keyless, KeylessError
from tests.core.helpers import make_jwt

STATUSES = st.sampled_from([200, 201, 204, 301, 400, 401, 403, 404, 429, 500, 502, 503])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12)
TOKEN_FIELDS = st.fixed_dictionaries({}, optional={
    "access_token": st.one_of(st.text(max_size=60), st.just(make_jwt()), st.integers()),
    "id_token": st.one_of(st.text(max_size=60), st.just(make_jwt(aud="x"))),
    "expires_in": st.one_of(st.integers(-10, 10**12), st.text(max_size=5), st.none()),
    "token_type": st.sampled_from(["Bearer", "bearer", "N_A", ""]),
    "issued_token_type": st.text(max_size=40),
    "error": st.text(max_size=20), "error_description": st.text(max_size=80),
})
BODIES = st.one_of(
    TOKEN_FIELDS.map(lambda d: json.dumps(d).encode()),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
)
SECRET = "client-secret-never-shown-0123456789"
SUBJECT = make_jwt(exp_in=3600, aud="https://sts.example", sub="worker-7")


def answering(status: int, body: bytes, content_type: str) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    return lambda: httpx.Client(transport=httpx.MockTransport(handler))


def check(call: Any) -> None:
    try:
        value = call()
    except KeylessError as exc:
        text = str(exc) + repr(exc)
        assert SECRET not in text and SUBJECT not in text
        return
    assert isinstance(value, str) and value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(status=STATUSES, body=BODIES,
       content_type=st.sampled_from(["application/json", "text/html", ""]))
def test_client_credentials_source_answers_only_with_a_token_or_keyless_error(
        status: int, body: bytes, content_type: str) -> None:
    identity = Keyless({"source": {"type": "client_credentials",
                                   "token_url": "https://idp.example/token",
                                   "client_id": "worker", "client_secret": SECRET,
                                   "audience": "https://sts.example"},
                        "target": {"aws": {"role_arn": "arn:aws:iam::123456789012:role/r"}}},
                       http=answering(status, body, content_type))
    check(identity.token)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(status=STATUSES, body=BODIES,
       content_type=st.sampled_from(["application/json", "text/plain"]),
       target=st.sampled_from(["oauth2", "huggingface"]))
def test_token_exchange_targets_answer_only_with_a_token_or_keyless_error(
        tmp_path_factory: Any, status: int, body: bytes, content_type: str,
        target: str) -> None:
    token_file: Path = tmp_path_factory.mktemp("subject") / "token"
    token_file.write_text(SUBJECT)
    spec: dict[str, Any] = ({"oauth2": {"token_url": "https://sts.example/token",
                                        "audience": "https://api.example"}}
                            if target == "oauth2" else
                            {"huggingface": {"resource": "org/model",
                                             "token_url": "https://hub.example/oauth/token"}})
    identity = Keyless({"source": {"type": "file", "path": str(token_file)}, "target": spec},
                       http=answering(status, body, content_type))
    check(identity.oauth2_token if target == "oauth2" else identity.huggingface_token)
