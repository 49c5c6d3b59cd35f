"""moto (STS + S3 + IAM) in server mode behind a verifying STS front: AWS on this machine.

For tests and the demo (``pip install 'keyless[testing]'``; the pytest fixture is
``aws_stack`` in :mod:`keyless.testing.pytest_plugin`). Never for production.

:class:`MotoServer` runs ``python -m moto.server`` on a free loopback port. :class:`AwsStack`
composes it with :class:`~keyless.testing.sts_front.StsFront` and bootstraps, while moto still
accepts unauthenticated calls: an IAM user ``keyless-bootstrap`` allowed ``*`` with an access
key, and the default bucket. Then (``enforce_iam=True``, the default) it switches moto's IAM
enforcement on through moto's own ``POST /moto-api/reset-auth`` with ``0`` (the server-mode
form of ``INITIAL_NO_AUTH_ACTION_COUNT``: the no-auth budget is exactly the bootstrap, whatever
it counts): from then on moto checks every signature and the permission policies of the
credentials it sees (moto ignores session policies and never checks expiry; the front covers
both). Everything else (OIDC providers, roles, objects) is done with the bootstrap identity.

Typical use (the IdP is the test's own; this fixture does not depend on it)::

    aws_stack.register_oidc_provider(idp.issuer, ["sts.amazonaws.com"])
    role = aws_stack.create_role("reader", issuer_url=idp.issuer,
                                 aud="sts.amazonaws.com", sub="trainer")
    env = {**os.environ, **aws_stack.env()}        # endpoints + region, no credentials
    aws_stack.front.max_session_seconds = 20        # force rollovers (restore afterwards)
    assert aws_stack.front.expired_uses == []       # nobody used expired credentials

S3 goes through the front by default (``s3_through_front=True``): it forwards to moto
unchanged but refuses credentials it issued once they have expired, like AWS (moto 5.2 never
checks ``Expiration``). Pass ``s3_through_front=False`` to point ``AWS_ENDPOINT_URL_S3`` straight
at moto. Known moto limits with IAM enforced: presigned URLs crash it (HTTP 500, it needs an
Authorization header); policy statements with ``Condition`` always deny.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config

from ..clock import Clock
from ..dev.process import terminate
from ..errors import KeylessError
from .ports import free_ports
from .sts_front import StsFront

__all__ = ["ACCOUNT_ID", "DEFAULT_BUCKET", "AwsStack", "MotoServer"]

ACCOUNT_ID = "123456789012"  # moto's default account
DEFAULT_BUCKET = "keyless-test"
_BOOTSTRAP_USER = "keyless-bootstrap"
_DUMMY_THUMBPRINT = "0" * 40


class MotoServer:
    """``python -m moto.server`` on loopback as a subprocess, stopped by its PID.

    Output goes to :attr:`log_path` (a temporary file), never to a pipe nobody reads.
    """

    def __init__(self, *, port: int | None = None, region: str = "us-east-1",
                 startup_timeout: float = 60.0) -> None:
        self.port = port or free_ports(1)[0]
        self.region = region
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="moto-")
        self.log_path = Path(self._dir.name) / "moto.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The moto process's PID while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> MotoServer:
        """Start moto and wait until ``/moto-api/`` answers (raise with the log tail if not)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_DEFAULT_REGION=self.region, AWS_REGION=self.region,
                   PYTHONUNBUFFERED="1")
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise KeylessError(f"moto-server: exited with {self._proc.returncode} on start; "
                                   f"log tail: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/moto-api/", timeout=2):  # noqa: S310
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise KeylessError(
                        f"moto-server: no answer on {self.url} within {self.startup_timeout} s; "
                        f"log tail: {self.log_tail()}") from None
                time.sleep(0.1)  # polling a subprocess for readiness, not a race

    def set_no_auth_budget(self, actions: float) -> None:
        """Let the next ``actions`` calls through unauthenticated (``0``: enforce IAM now,
        ``inf``: never). moto's ``INITIAL_NO_AUTH_ACTION_COUNT``, reset at run time."""
        req = urllib.request.Request(self.url + "/moto-api/reset-auth",  # noqa: S310
                                     data=str(float(actions)).encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - http://127.0.0.1
            r.read()

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Terminate the process by PID (kill after 10 s); idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()


class AwsStack:
    """moto + verifying STS front + bootstrap identity; a context manager.

    ``max_session_seconds`` caps the Expiration the front returns; ``clock`` is the front's
    clock (token exp/nbf, Expiration, expired-credential checks); ``enforce_iam`` turns moto's
    IAM permission checks on after the bootstrap.
    """

    def __init__(self, *, enforce_iam: bool = True, max_session_seconds: float | None = None,
                 s3_through_front: bool = True, region: str = "us-east-1",
                 bucket: str = DEFAULT_BUCKET, clock: Clock | None = None) -> None:
        self.enforce_iam = enforce_iam
        self.s3_through_front = s3_through_front
        self.region = region
        self.bucket = bucket
        self.account_id = ACCOUNT_ID
        self.moto = MotoServer(region=region)
        self._max_session_seconds = max_session_seconds
        self._clock = clock
        self._bootstrap: dict[str, str] = {}
        self._front: StsFront | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> AwsStack:
        self.moto.start()
        try:
            self._bootstrap_identity()
            if self.enforce_iam:
                self.moto.set_no_auth_budget(0)
            self._front = StsFront(
                moto_url=self.moto.url, iam=self._moto_client("iam"), sts=self._moto_client("sts"),
                bootstrap_arn=self.bootstrap_arn, account_id=self.account_id, clock=self._clock,
                max_session_seconds=self._max_session_seconds).start()
        except BaseException:
            self.stop()
            raise
        return self

    def _bootstrap_identity(self) -> None:
        dummy = {"AccessKeyId": "AKIABOOTSTRAPDUMMY00", "SecretAccessKey": "bootstrap"}
        iam = self._moto_client("iam", dummy)
        iam.create_user(UserName=_BOOTSTRAP_USER)
        iam.put_user_policy(UserName=_BOOTSTRAP_USER, PolicyName="everything",
                            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                                {"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName=_BOOTSTRAP_USER)["AccessKey"]
        self._bootstrap = {"AccessKeyId": key["AccessKeyId"],
                           "SecretAccessKey": key["SecretAccessKey"]}
        self._moto_client("s3", dummy).create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        if self._front is not None:
            self._front.stop()
            self._front = None
        self.moto.stop()

    def __enter__(self) -> AwsStack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ endpoints
    @property
    def front(self) -> StsFront:
        if self._front is None:
            raise KeylessError("aws-fixture: the stack is not started; use `with AwsStack()`")
        return self._front

    @property
    def sts_url(self) -> str:
        """The verifying STS front."""
        return self.front.url

    @property
    def s3_url(self) -> str:
        """Where S3 clients go: the front (expiry-checking pass-through) or moto itself."""
        return self.front.url if self.s3_through_front else self.moto.url

    @property
    def moto_url(self) -> str:
        return self.moto.url

    @property
    def bootstrap_arn(self) -> str:
        return f"arn:aws:iam::{self.account_id}:user/{_BOOTSTRAP_USER}"

    def env(self) -> dict[str, str]:
        """Variables for a subprocess using plain boto3 (endpoints, region; no credentials)."""
        return {
            "AWS_ENDPOINT_URL_STS": self.sts_url,
            "AWS_ENDPOINT_URL_S3": self.s3_url,
            "AWS_ENDPOINT_URL_IAM": self.moto_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_STS_REGIONAL_ENDPOINTS": "regional",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    # ------------------------------------------------------------------ clients
    def _moto_client(self, service: str, credentials: Mapping[str, str] | None = None) -> Any:
        return self._make_client(service, self.moto.url, credentials)

    def _make_client(self, service: str, endpoint: str,
                     credentials: Mapping[str, str] | None) -> Any:
        creds = credentials if credentials is not None else self._bootstrap
        session: Any = boto3.session.Session()
        return session.client(
            service, region_name=self.region, endpoint_url=endpoint,
            aws_access_key_id=creds.get("AccessKeyId") or creds.get("aws_access_key_id"),
            aws_secret_access_key=(creds.get("SecretAccessKey")
                                   or creds.get("aws_secret_access_key")),
            aws_session_token=creds.get("SessionToken") or creds.get("aws_session_token"),
            config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"},
                          signature_version="s3v4" if service == "s3" else None))

    def client(self, service: str, credentials: Mapping[str, str] | None = None) -> Any:
        """A boto3 client (no retries) on this stack: ``sts`` → the front, ``s3`` →
        :attr:`s3_url`, others → moto. ``credentials`` in STS shape (``AccessKeyId``,
        ``SecretAccessKey``, ``SessionToken``) or botocore names; default: bootstrap."""
        endpoint = {"sts": self.front.url, "s3": self.s3_url}.get(service, self.moto.url)
        return self._make_client(service, endpoint, credentials)

    # ------------------------------------------------------------------ resources
    def register_oidc_provider(self, issuer_url: str, client_ids: list[str]) -> str:
        """Create (or extend with ``client_ids``) the IAM OIDC provider for ``issuer_url``."""
        iam = self.client("iam")
        arn = (f"arn:aws:iam::{self.account_id}:oidc-provider/"
               + issuer_url.split("://", 1)[-1].rstrip("/"))
        try:
            have = iam.get_open_id_connect_provider(OpenIDConnectProviderArn=arn)["ClientIDList"]
        except iam.exceptions.NoSuchEntityException:
            return str(iam.create_open_id_connect_provider(
                Url=issuer_url, ClientIDList=list(client_ids),
                ThumbprintList=[_DUMMY_THUMBPRINT])["OpenIDConnectProviderArn"])
        for client_id in client_ids:
            if client_id not in have:
                iam.add_client_id_to_open_id_connect_provider(
                    OpenIDConnectProviderArn=arn, ClientID=client_id)
        return arn

    def default_permissions(self, bucket: str | None = None) -> dict[str, Any]:
        """``s3:*`` on ``bucket`` (default: the stack's bucket) and its objects."""
        b = bucket or self.bucket
        return {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "s3:*",
            "Resource": [f"arn:aws:s3:::{b}", f"arn:aws:s3:::{b}/*"]}]}

    def create_role(self, name: str, *, issuer_url: str, aud: str, sub: str,
                    permissions: dict[str, Any] | None = None,
                    max_session_duration: int = 3600) -> str:
        """Create or replace role ``name`` trusting ``issuer_url`` tokens with ``aud``
        (StringEquals) and ``sub`` (StringLike: ``*`` allowed); returns the role ARN. The
        inline policy ``permissions`` defaults to :meth:`default_permissions`."""
        url = issuer_url.split("://", 1)[-1].rstrip("/")
        trust = json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": f"arn:aws:iam::{self.account_id}:oidc-provider/{url}"},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {f"{url}:aud": aud},
                          "StringLike": {f"{url}:sub": sub}}}]})
        iam = self.client("iam")
        try:
            arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust,
                                  MaxSessionDuration=max_session_duration)["Role"]["Arn"]
        except iam.exceptions.EntityAlreadyExistsException:
            iam.update_assume_role_policy(RoleName=name, PolicyDocument=trust)
            iam.update_role(RoleName=name, MaxSessionDuration=max_session_duration)
            arn = iam.get_role(RoleName=name)["Role"]["Arn"]
        iam.put_role_policy(RoleName=name, PolicyName="permissions", PolicyDocument=json.dumps(
            permissions if permissions is not None else self.default_permissions()))
        return str(arn)

    def create_bucket(self, name: str) -> None:
        self.client("s3").create_bucket(Bucket=name)

    def put_object(self, bucket: str, key: str, body: bytes | str) -> None:
        self.client("s3").put_object(Bucket=bucket, Key=key,
                                     Body=body.encode() if isinstance(body, str) else body)

    def get_object(self, bucket: str, key: str) -> bytes:
        return bytes(self.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
