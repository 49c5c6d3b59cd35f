"""The moto + verifying STS front fixture, driven with plain boto3 and a tiny local issuer.

The issuer is made here (an RSA key, discovery + JWKS on loopback); the `aws_stack` fixture
comes from tests/conftest.py (pytest_plugins = tests.support.aws).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import jwt
import pytest
from botocore import UNSIGNED
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.asymmetric import rsa

from keyless.clock import FakeClock
from tests.support.aws import AwsStack

AUD = "sts.amazonaws.com"


class Issuer:
    """A minimal OIDC issuer: discovery + JWKS over loopback HTTP, tokens minted in-process."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    doc: dict[str, Any] = {"issuer": issuer.url,
                                           "jwks_uri": issuer.url + "/jwks.json"}
                elif self.path == "/jwks.json":
                    doc = issuer.jwks
                else:
                    self.send_error(404)
                    return
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def mint(self, *, sub: str = "worker-0", aud: str | list[str] = AUD, now: float | None = None,
             ttl: float = 300, key: Any = None, kid: str = "k1", **extra: Any) -> str:
        t = time.time() if now is None else now
        claims = {"iss": self.url, "sub": sub, "aud": aud, "iat": int(t), "nbf": int(t) - 5,
                  "exp": int(t + ttl), **extra}
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    i = Issuer()
    yield i
    i.close()


@pytest.fixture()
def stack(aws_stack: AwsStack, issuer: Issuer) -> Iterator[AwsStack]:
    aws_stack.register_oidc_provider(issuer.url, [AUD, "other-client"])
    yield aws_stack
    aws_stack.front.reset_hooks()
    aws_stack.front.max_session_seconds = None


def _role(stack: AwsStack, issuer: Issuer, sub: str = "worker-*", **kw: Any) -> str:
    return stack.create_role(f"r-{uuid.uuid4().hex[:10]}", issuer_url=issuer.url, aud=AUD,
                             sub=sub, **kw)


def _assume(stack: AwsStack, token: str, role_arn: str, session: str = "rank-0",
            **kw: Any) -> dict[str, Any]:
    sts = boto3.session.Session().client(
        "sts", region_name="us-east-1", endpoint_url=stack.sts_url,
        config=Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1}))
    return dict(sts.assume_role_with_web_identity(
        RoleArn=role_arn, RoleSessionName=session, WebIdentityToken=token, **kw))


def _error(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, str, int]:
    err = excinfo.value.response
    return (err["Error"]["Code"], err["Error"]["Message"],
            err["ResponseMetadata"]["HTTPStatusCode"])


def test_good_token_gets_credentials_that_work_in_moto(stack: AwsStack, issuer: Issuer) -> None:
    role = _role(stack, issuer)
    token = issuer.mint(sub="worker-3")
    out = _assume(stack, token, role, session="rank-3")
    creds = out["Credentials"]
    name = role.rsplit("/", 1)[1]
    assert out["AssumedRoleUser"]["Arn"] == f"arn:aws:sts::123456789012:assumed-role/{name}/rank-3"
    assert out["SubjectFromWebIdentityToken"] == "worker-3"
    assert out["Audience"] == AUD
    assert out["Provider"].endswith(":oidc-provider/" + issuer.url.split("://")[1])

    s3 = stack.client("s3", creds)
    s3.put_object(Bucket=stack.bucket, Key="good/obj", Body=b"hello")
    assert s3.get_object(Bucket=stack.bucket, Key="good/obj")["Body"].read() == b"hello"
    assert stack.get_object(stack.bucket, "good/obj") == b"hello"
    who = stack.client("sts", creds).get_caller_identity()
    assert who["Arn"] == f"arn:aws:sts::123456789012:assumed-role/{name}/rank-3"

    record = stack.front.accepted[-1]
    assert (record["session_name"], record["sub"], record["aud"], record["role"]) == (
        "rank-3", "worker-3", AUD, role)
    assert record["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()[:12]
    assert token not in repr(stack.front.accepted) + repr(stack.front.issued)
    used = [f for f in stack.front.forwarded if f["access_key_id"] == creds["AccessKeyId"]]
    assert {(f["session_name"], f["service"], f["method"]) for f in used} >= {
        ("rank-3", "s3", "PUT"), ("rank-3", "s3", "GET")}


@pytest.mark.parametrize(
    ("mint", "code", "message", "status"),
    [
        ({"aud": "not-registered"}, "InvalidIdentityToken", "Incorrect token audience", 400),
        ({"aud": "other-client"}, "AccessDenied",  # registered, but not in the trust policy
         "Not authorized to perform sts:AssumeRoleWithWebIdentity", 403),
        ({"sub": "intruder"}, "AccessDenied",
         "Not authorized to perform sts:AssumeRoleWithWebIdentity", 403),
        ({"ttl": -600}, "ExpiredTokenException", "Token expired: current date/time", 400),
        ({"kid": "k1", "other_key": True}, "InvalidIdentityToken", "signature", 400),
        ({"kid": "unknown", "other_key": True}, "InvalidIdentityToken",
         "Couldn't retrieve verification key", 400),
    ],
)
def test_rejected_tokens_get_sts_errors(stack: AwsStack, issuer: Issuer, mint: dict[str, Any],
                                        code: str, message: str, status: int) -> None:
    role = _role(stack, issuer)
    if mint.pop("other_key", False):
        mint["key"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    before = len(stack.front.accepted)
    with pytest.raises(ClientError) as excinfo:
        _assume(stack, issuer.mint(**mint), role)
    got_code, got_message, got_status = _error(excinfo)
    assert (got_code, got_status) == (code, status)
    assert message in got_message
    assert len(stack.front.accepted) == before


def test_garbage_and_unknown_issuer(stack: AwsStack, issuer: Issuer) -> None:
    role = _role(stack, issuer)
    with pytest.raises(ClientError) as excinfo:
        _assume(stack, "not-a-jwt-at-all", role)
    assert _error(excinfo)[0] == "InvalidIdentityToken"
    stranger = jwt.encode({"iss": "http://127.0.0.1:9/nobody", "sub": "worker-0", "aud": AUD,
                           "exp": int(time.time()) + 300}, issuer.key, algorithm="RS256")
    with pytest.raises(ClientError) as excinfo:
        _assume(stack, stranger, role)
    code, message, _ = _error(excinfo)
    assert code == "InvalidIdentityToken"
    assert message == "No OpenIDConnect provider found in your account for http://127.0.0.1:9/nobody"


def test_unreachable_issuer_is_an_idp_communication_error(stack: AwsStack,
                                                           issuer: Issuer) -> None:
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    stack.register_oidc_provider(dead, [AUD])
    role = stack.create_role(f"r-{uuid.uuid4().hex[:10]}", issuer_url=dead, aud=AUD, sub="*")
    token = jwt.encode({"iss": dead, "sub": "x", "aud": AUD, "exp": int(time.time()) + 300},
                       issuer.key, algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(ClientError) as excinfo:
        _assume(stack, token, role)
    assert _error(excinfo)[0] == "IDPCommunicationError"


def test_chunked_upload_passes_the_front(stack: AwsStack, issuer: Issuer) -> None:
    """A SigV4-signed PUT sent with Transfer-Encoding: chunked (as some SDKs do) reaches moto
    intact. (moto's IAM enforcement cannot check presigned URLs: it needs an Authorization
    header, so presigned requests are not usable with enforce_iam=True.)"""
    creds = _assume(stack, issuer.mint(), _role(stack, issuer), session="rank-5")["Credentials"]
    body = b"chunk-1 chunk-2"
    request = AWSRequest(method="PUT", url=f"{stack.s3_url}/{stack.bucket}/chunked", data=body)
    S3SigV4Auth(Credentials(creds["AccessKeyId"], creds["SecretAccessKey"],
                            creds["SessionToken"]), "s3", "us-east-1").add_auth(request)
    url = urlsplit(stack.s3_url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port)
    conn.request("PUT", f"/{stack.bucket}/chunked", body=iter([body[:8], body[8:]]),
                 headers=dict(request.headers.items()), encode_chunked=True)
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"")
    conn.close()
    assert stack.get_object(stack.bucket, "chunked") == body
    used = [(f["session_name"], f["method"]) for f in stack.front.forwarded
            if f["access_key_id"] == creds["AccessKeyId"]]
    assert used == [("rank-5", "PUT")]


def test_throttle_and_failure_hooks(stack: AwsStack, issuer: Issuer) -> None:
    role = _role(stack, issuer)
    calls = stack.front.calls
    stack.front.throttle_next(1)
    stack.front.fail_next(1, status=503)
    with pytest.raises(ClientError) as excinfo:
        _assume(stack, issuer.mint(), role)
    assert _error(excinfo) == ("Throttling", "Rate exceeded", 400)
    with pytest.raises(ClientError) as excinfo:
        _assume(stack, issuer.mint(), role)
    assert _error(excinfo)[2] == 503
    assert _assume(stack, issuer.mint(), role)["Credentials"]["AccessKeyId"]
    assert stack.front.calls == calls + 3


def test_session_policy_confines_a_rank_to_its_shard(stack: AwsStack, issuer: Issuer) -> None:
    b = stack.bucket
    role = _role(stack, issuer)
    for shard in (0, 1):
        stack.put_object(b, f"shards/{shard}/part", f"shard {shard}")
    policy = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{b}/shards/0/*"}]})
    creds = _assume(stack, issuer.mint(), role, session="rank-0", Policy=policy)["Credentials"]
    s3 = stack.client("s3", creds)
    assert s3.get_object(Bucket=b, Key="shards/0/part")["Body"].read() == b"shard 0"
    with pytest.raises(ClientError) as excinfo:
        s3.get_object(Bucket=b, Key="shards/1/part")
    assert _error(excinfo)[0] == "AccessDenied"
    with pytest.raises(ClientError):  # the session policy grants no PutObject
        s3.put_object(Bucket=b, Key="shards/0/new", Body=b"x")
    name = role.rsplit("/", 1)[1]
    assert stack.client("sts", creds).get_caller_identity()["Arn"].endswith(
        f":assumed-role/{name}/rank-0")
    # Control: without a session policy the same role reads shard 1.
    plain = _assume(stack, issuer.mint(), role, session="rank-1")["Credentials"]
    assert stack.client("s3", plain).get_object(Bucket=b, Key="shards/1/part")["Body"].read()


def test_session_policy_never_widens_the_role(stack: AwsStack, issuer: Issuer) -> None:
    other = f"other-{uuid.uuid4().hex[:8]}"
    stack.create_bucket(other)
    stack.put_object(other, "secret", "no")
    role = _role(stack, issuer)  # s3:* on the stack's bucket only
    everything = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "*", "Resource": "*"}]})
    creds = _assume(stack, issuer.mint(), role, Policy=everything)["Credentials"]
    with pytest.raises(ClientError) as excinfo:
        stack.client("s3", creds).get_object(Bucket=other, Key="secret")
    assert _error(excinfo)[0] == "AccessDenied"


def test_a_session_policy_over_awss_length_limit_is_refused_as_aws_does(
        stack: AwsStack, issuer: Issuer) -> None:
    role = _role(stack, issuer)
    statement = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/"}
    fits = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    padded = {**statement, "Resource": statement["Resource"] + "x" * (2049 - len(fits))}
    too_long = json.dumps({"Version": "2012-10-17", "Statement": [padded]})
    assert len(too_long) == 2049
    with pytest.raises(ClientError) as excinfo:
        _assume(stack, issuer.mint(), role, Policy=too_long)
    assert _error(excinfo)[0] == "ValidationError"
    at_limit = too_long.replace("x", "", 1)
    assert _assume(stack, issuer.mint(), role, Policy=at_limit)["Credentials"]["AccessKeyId"]


def test_moto_enforces_iam(stack: AwsStack, issuer: Issuer) -> None:
    bogus = {"AccessKeyId": "AKIAFAKEFAKEFAKEFAKE", "SecretAccessKey": "x"}
    with pytest.raises(ClientError):
        stack.client("s3", bogus).get_object(Bucket=stack.bucket, Key="anything")
    role = _role(stack, issuer, permissions={"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]})
    creds = _assume(stack, issuer.mint(), role)["Credentials"]
    with pytest.raises(ClientError) as excinfo:
        stack.client("s3", creds).put_object(Bucket=stack.bucket, Key="ro", Body=b"x")
    assert _error(excinfo)[0] == "AccessDenied"


def test_max_session_seconds_caps_expiration(stack: AwsStack, issuer: Issuer) -> None:
    role = _role(stack, issuer)
    stack.front.max_session_seconds = 20
    before = time.time()
    out = _assume(stack, issuer.mint(), role, DurationSeconds=3600)
    after = time.time()
    expiration = out["Credentials"]["Expiration"].timestamp()
    assert before + 20 - 1 <= expiration <= after + 20
    with pytest.raises(ClientError) as excinfo:  # above the role's MaxSessionDuration (3600)
        _assume(stack, issuer.mint(), role, DurationSeconds=7200)
    assert _error(excinfo)[0] == "ValidationError"


def test_expired_credentials_are_refused_and_recorded(stack: AwsStack, issuer: Issuer) -> None:
    front = stack.front
    clock = FakeClock(start=time.time())
    saved = front.clock
    front.clock = clock
    try:
        role = _role(stack, issuer)
        front.max_session_seconds = 20
        out = _assume(stack, issuer.mint(now=clock.time()), role, session="rank-7")
        s3 = stack.client("s3", out["Credentials"])
        s3.put_object(Bucket=stack.bucket, Key="exp/obj", Body=b"x")
        assert front.expired_uses == []
        clock.advance(21)
        with pytest.raises(ClientError) as excinfo:
            s3.get_object(Bucket=stack.bucket, Key="exp/obj")
        assert _error(excinfo)[:1] == ("ExpiredToken",)
        assert [(u["session_name"], u["service"]) for u in front.expired_uses] == [
            ("rank-7", "s3")]
    finally:
        front.clock = saved


def test_plain_boto3_subprocess_with_web_identity_env(stack: AwsStack, issuer: Issuer,
                                                      tmp_path: Path) -> None:
    role = _role(stack, issuer)
    stack.put_object(stack.bucket, "sub/obj", "from a subprocess")
    token_file = tmp_path / "token"
    token_file.write_text(issuer.mint(sub="worker-9"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **stack.env(),
           "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file), "AWS_ROLE_ARN": role,
           "AWS_ROLE_SESSION_NAME": "rank-9"}
    assert not any("KEY" in k or "TOKEN" == k[-5:] for k in stack.env())
    code = ("import boto3; s=boto3.Session();"
            "print(s.client('sts').get_caller_identity()['Arn']);"
            f"print(s.client('s3').get_object(Bucket={stack.bucket!r}, Key='sub/obj')"
            "['Body'].read().decode())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    assert out == [f"arn:aws:sts::123456789012:assumed-role/{role.rsplit('/', 1)[1]}/rank-9",
                   "from a subprocess"]
    assert stack.front.accepted[-1]["sub"] == "worker-9"
