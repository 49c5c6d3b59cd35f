"""A verifying STS front for moto: checks web-identity tokens like AWS before moto sees them.

moto accepts any string as a web-identity token and ignores trust policies and session
policies. :class:`StsFront` listens on loopback and, for ``Action=AssumeRoleWithWebIdentity``:

1. validates the request (``RoleSessionName``, ``DurationSeconds``, ``Policy``);
2. verifies the JWT as AWS does: ``iss`` must be an IAM OIDC provider registered in moto
   (provider URL = issuer without scheme), signature checked with the issuer's JWKS found
   through its discovery document (loopback issuers only), ``exp``/``nbf`` against the injected
   clock, ``aud`` in the provider's ``ClientIDList``;
3. checks the role's trust policy: an ``Allow`` statement for ``Principal.Federated`` = the
   provider ARN and ``sts:AssumeRoleWithWebIdentity`` whose conditions
   (``StringEquals``/``StringLike``/``StringNotEquals``/``StringNotLike``, optionally
   ``ForAnyValue:``/``ForAllValues:``) on ``<provider-url>:aud|sub|iss`` hold;
4. gets real moto credentials with the bootstrap identity's signed ``AssumeRole``: on the base
   role itself, or, with a session policy, on a per-session role
   (:func:`keyless.testing.sts_policy.session_role_policy`);
5. answers an ``AssumeRoleWithWebIdentityResponse`` with ``Expiration`` capped at
   ``now + max_session_seconds``.

Errors use STS's codes, messages and XML (``InvalidIdentityToken``, ``ExpiredTokenException``,
``AccessDenied``, ``IDPCommunicationError``, ``ValidationError``, ``Throttling``).

Every other request (signed STS calls, and S3 when the S3 endpoint points here) is forwarded
to moto byte for byte (Host kept, so SigV4 still verifies). moto never checks credential
expiry, so the front does it for the credentials it issued: a request made with them after
their ``Expiration`` is recorded in :attr:`StsFront.expired_uses` and, when ``reject_expired``,
refused with AWS's ``ExpiredToken`` error. Tokens and secrets are never recorded.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import deque
from typing import Any

from ..clock import Clock, SystemClock
from ..config.targets import SESSION_POLICY_MAX
from ..delivery.loopback import LoopbackHttpServer, LoopbackService
from .sts_policy import StsError, TokenVerifier, session_role_policy, trust_allows
from .sts_wire import (
    FrontHandler,
    Headers,
    Reply,
    error_reply,
    forward_to,
    header_value,
    query_params,
    s3_expired_reply,
    web_identity_reply,
)

__all__ = ["BOOTSTRAP_SID", "IssuedCredentials", "StsError", "StsFront", "TokenVerifier",
           "error_reply", "session_role_policy", "trust_allows"]

BOOTSTRAP_SID = "StsFrontBootstrap"

_SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")
_AKID = re.compile(r"Credential=([A-Z0-9]+)/|X-Amz-Credential=([A-Z0-9]+)(?:/|%2F)")
_SCOPE_SERVICE = re.compile(r"Credential=[A-Z0-9]+/\d{8}/[^/]+/([^/]+)/")


class IssuedCredentials:
    """What the front knows about credentials it issued (never the secret or the token)."""

    __slots__ = ("access_key_id", "base_role_arn", "expiration", "moto_role_name", "session_name")

    def __init__(
        self,
        access_key_id: str,
        session_name: str,
        base_role_arn: str,
        moto_role_name: str,
        expiration: float,
    ) -> None:
        self.access_key_id = access_key_id
        self.session_name = session_name
        self.base_role_arn = base_role_arn
        self.moto_role_name = moto_role_name
        self.expiration = expiration

    def __repr__(self) -> str:
        return (
            f"IssuedCredentials({self.access_key_id!r}, session={self.session_name!r}, "
            f"role={self.base_role_arn!r}, expiration={self.expiration})"
        )


class StsFront(LoopbackService):
    """Verifying STS front; start with :meth:`start` (or ``with``), stop with :meth:`stop`.

    ``iam``/``sts`` are boto3 clients on moto signed by the bootstrap identity (an IAM user
    allowed everything); ``bootstrap_arn`` is that user's ARN.
    """

    def __init__(
        self,
        *,
        moto_url: str,
        iam: Any,
        sts: Any,
        bootstrap_arn: str,
        account_id: str = "123456789012",
        clock: Clock | None = None,
        max_session_seconds: float | None = None,
        reject_expired: bool = True,
        leeway_seconds: float = 0.0,
    ) -> None:
        self.moto_url = moto_url.rstrip("/")
        self._iam = iam
        self._sts = sts
        self._bootstrap_arn = bootstrap_arn
        self.account_id = account_id
        self.clock: Clock = clock or SystemClock()
        self.reject_expired = reject_expired
        self._verifier = TokenVerifier(iam, account_id, lambda: self.clock.time(), leeway_seconds)
        self._lock = threading.Lock()
        self._max_session_seconds = max_session_seconds
        self._calls = 0
        self._throttle = 0
        self._fail: list[int] = []
        self._accepted: list[dict[str, Any]] = []
        self._issued: dict[str, IssuedCredentials] = {}
        self._expired_uses: list[dict[str, Any]] = []
        self._forwarded: deque[dict[str, Any]] = deque(maxlen=10_000)
        self._server = LoopbackHttpServer(  # whole test clusters' connection pools: more room
            FrontHandler, component="sts-front", attributes={"front": self},
            request_timeout=60, max_connections=512)

    # ----------------------------------------------------------------- test hooks
    @property
    def max_session_seconds(self) -> float | None:
        """Cap on the returned ``Expiration`` (``None``: DurationSeconds only)."""
        with self._lock:
            return self._max_session_seconds

    @max_session_seconds.setter
    def max_session_seconds(self, value: float | None) -> None:
        with self._lock:
            self._max_session_seconds = value

    @property
    def calls(self) -> int:
        """AssumeRoleWithWebIdentity requests received (answered or not)."""
        with self._lock:
            return self._calls

    @property
    def accepted(self) -> list[dict[str, Any]]:
        """One dict per issued credential: session_name, sub, aud, iss, role, token_sha256
        (12-hex prefix), access_key_id, expiration (epoch s), session_policy, policy_arns, tags."""
        with self._lock:
            return [dict(a) for a in self._accepted]

    @property
    def issued(self) -> dict[str, IssuedCredentials]:
        """Issued credentials by access key id."""
        with self._lock:
            return dict(self._issued)

    @property
    def expired_uses(self) -> list[dict[str, Any]]:
        """Requests made with issued credentials after their Expiration."""
        with self._lock:
            return [dict(u) for u in self._expired_uses]

    @property
    def forwarded(self) -> list[dict[str, Any]]:
        """Recent requests made with issued credentials: session_name, role, access_key_id,
        service, method, path, time, expired, status (moto's HTTP status; ``None`` while in
        flight or when refused as expired)."""
        with self._lock:
            return [dict(f) for f in self._forwarded]

    def throttle_next(self, n: int = 1) -> None:
        """Answer the next ``n`` AssumeRoleWithWebIdentity calls with 400 ``Throttling``."""
        with self._lock:
            self._throttle += n

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        """Answer the next ``n`` AssumeRoleWithWebIdentity calls with HTTP ``status``."""
        with self._lock:
            self._fail.extend([status] * n)

    def reset_hooks(self) -> None:
        """Drop pending throttles/failures and clear the records (not the issued map)."""
        with self._lock:
            self._throttle = 0
            self._fail.clear()
            self._accepted.clear()
            self._expired_uses.clear()
            self._forwarded.clear()

    # ----------------------------------------------------------------- dispatch
    def handle(self, method: str, path: str, headers: Headers, body: bytes) -> Reply:
        """Answer one HTTP request (called by the handler thread)."""
        params = query_params(method, path, headers, body)
        if params.get("Action") == "AssumeRoleWithWebIdentity":
            return self._assume_role_with_web_identity(params)
        return self._forward(method, path, headers, body)

    def _assume_role_with_web_identity(self, params: dict[str, str]) -> Reply:
        with self._lock:
            self._calls += 1
            if self._throttle > 0:
                self._throttle -= 1
                return error_reply(400, "Throttling", "Rate exceeded")
            if self._fail:
                status = self._fail.pop(0)
                code = "ServiceUnavailable" if status == 503 else "InternalFailure"
                return error_reply(status, code, "sts-front: injected failure", "Receiver")
        try:
            return self._issue(params)
        except StsError as e:
            return error_reply(e.status, e.code, e.message, e.type)

    def _issue(self, p: dict[str, str]) -> Reply:
        role_arn, session = p.get("RoleArn", ""), p.get("RoleSessionName", "")
        token = p.get("WebIdentityToken", "")
        for name, value in (
            ("roleArn", role_arn),
            ("roleSessionName", session),
            ("webIdentityToken", token),
        ):
            if not value:
                raise StsError(
                    400,
                    "ValidationError",
                    "1 validation error detected: Value null"
                    f" at '{name}' failed to satisfy constraint: Member must not be null",
                )
        if not _SESSION_NAME.match(session):
            raise StsError(
                400,
                "ValidationError",
                f"1 validation error detected: Value "
                f"'{session}' at 'roleSessionName' failed to satisfy constraint: "
                "Member must satisfy regular expression pattern: [\\w+=,.@-]*",
            )
        duration = int(p.get("DurationSeconds", "3600") or "3600")
        if not 900 <= duration <= 43200:
            raise StsError(
                400,
                "ValidationError",
                f"1 validation error detected: Value "
                f"'{duration}' at 'durationSeconds' failed to satisfy constraint: "
                "Member must have value between 900 and 43200",
            )
        policy = p.get("Policy")
        if policy is not None and len(policy) > SESSION_POLICY_MAX:  # AWS: length 1 to 2048
            raise StsError(400, "ValidationError", "1 validation error detected: Value at "
                           "'policy' failed to satisfy constraint: Member must have length "
                           f"less than or equal to {SESSION_POLICY_MAX}")
        if policy is not None:
            try:
                json.loads(policy)
            except ValueError:
                raise StsError(
                    400, "MalformedPolicyDocument", "The policy is not in the valid JSON format."
                ) from None
        policy_arns = [
            v for k, v in sorted(p.items()) if re.fullmatch(r"PolicyArns\.member\.\d+\.arn", k)
        ]
        tags = {
            p[k]: p.get(k[:-3] + "Value", "")
            for k in p
            if re.fullmatch(r"Tags\.member\.\d+\.Key", k)
        }

        claims, provider_arn, audience = self._verifier.verify(token)
        try:
            role = self._iam.get_role(RoleName=role_arn.rsplit("/", 1)[-1])["Role"]
        except Exception:
            raise _denied() from None
        if role["Arn"] != role_arn:
            raise _denied()
        trust = role["AssumeRolePolicyDocument"]
        trust = json.loads(trust) if isinstance(trust, str) else trust
        if not trust_allows(trust, provider_arn, claims):
            raise _denied()
        if duration > int(role.get("MaxSessionDuration", 3600)):
            raise StsError(
                400,
                "ValidationError",
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
            )

        moto_role = role
        if policy is not None or policy_arns:
            moto_role = self._session_role(role, policy, policy_arns)
        self._ensure_bootstrap_trust(moto_role)
        now = self.clock.time()
        cap = self.max_session_seconds
        expiration = now + (duration if cap is None else min(duration, cap))
        creds = self._sts.assume_role(
            RoleArn=moto_role["Arn"], RoleSessionName=session, DurationSeconds=duration
        )["Credentials"]
        akid = creds["AccessKeyId"]
        record = {
            "session_name": session,
            "sub": claims.get("sub"),
            "aud": audience,
            "iss": claims.get("iss"),
            "role": role_arn,
            "token_sha256": hashlib.sha256(token.encode()).hexdigest()[:12],
            "access_key_id": akid,
            "expiration": expiration,
            "session_policy": policy is not None,
            "policy_arns": policy_arns,
            "tags": tags,
        }
        with self._lock:
            self._accepted.append(record)
            self._issued[akid] = IssuedCredentials(
                akid, session, role_arn, moto_role["RoleName"], expiration
            )
        return web_identity_reply(creds, expiration, role, session, claims, audience, provider_arn)

    def _session_role(
        self, role: dict[str, Any], policy: str | None, policy_arns: list[str]
    ) -> dict[str, Any]:
        """The per-session moto role whose permissions are (base role) ∩ (session policies)."""
        doc = session_role_policy(self._iam, role["RoleName"], policy, policy_arns)
        digest = hashlib.sha256(json.dumps([role["Arn"], doc], sort_keys=True).encode())
        name = f"{role['RoleName'][:44]}--{digest.hexdigest()[:16]}"
        try:
            return dict(self._iam.get_role(RoleName=name)["Role"])
        except self._iam.exceptions.NoSuchEntityException:
            pass
        trust = {"Version": "2012-10-17", "Statement": [_bootstrap_statement(self._bootstrap_arn)]}
        try:
            made = self._iam.create_role(
                RoleName=name,
                Path="/sts-front/",
                AssumeRolePolicyDocument=json.dumps(trust),
                MaxSessionDuration=int(role.get("MaxSessionDuration", 3600)),
            )["Role"]
        except self._iam.exceptions.EntityAlreadyExistsException:  # a concurrent twin won
            return dict(self._iam.get_role(RoleName=name)["Role"])
        self._iam.put_role_policy(
            RoleName=name, PolicyName="session", PolicyDocument=json.dumps(doc)
        )
        return dict(made)

    def _ensure_bootstrap_trust(self, role: dict[str, Any]) -> None:
        """Let the bootstrap user AssumeRole ``role`` in moto (one extra trust statement)."""
        trust = role["AssumeRolePolicyDocument"]
        trust = json.loads(trust) if isinstance(trust, str) else trust
        statements = trust.get("Statement", [])
        statements = [statements] if isinstance(statements, dict) else list(statements)
        if any(s.get("Sid") == BOOTSTRAP_SID for s in statements):
            return
        statements.append(_bootstrap_statement(self._bootstrap_arn))
        self._iam.update_assume_role_policy(
            RoleName=role["RoleName"], PolicyDocument=json.dumps({**trust, "Statement": statements})
        )

    # ----------------------------------------------------------------- forwarding
    def _forward(self, method: str, path: str, headers: Headers, body: bytes) -> Reply:
        authorization = header_value(headers, "authorization")
        auth = authorization + " " + path
        m = _AKID.search(auth)
        akid = (m.group(1) or m.group(2)) if m else None
        with self._lock:
            issued = self._issued.get(akid) if akid else None
        scope = _SCOPE_SERVICE.search(authorization)
        service = scope.group(1) if scope else ("s3" if "X-Amz-Credential" in path else "")
        if issued is not None:
            now = self.clock.time()
            entry = {
                "session_name": issued.session_name,
                "role": issued.base_role_arn,
                "access_key_id": issued.access_key_id,
                "service": service,
                "method": method,
                "path": path.split("?", 1)[0],
                "time": now,
                "expired": now >= issued.expiration,
                "status": None,
            }
            with self._lock:
                self._forwarded.append(entry)
                if entry["expired"]:
                    self._expired_uses.append(entry)
            if entry["expired"] and self.reject_expired:
                if service == "s3":
                    return s3_expired_reply()
                return error_reply(
                    403, "ExpiredToken", "The security token included in the request is expired"
                )
        status, out_headers, out_body = forward_to(self.moto_url, method, path, headers, body)
        if issued is not None:
            with self._lock:
                entry["status"] = status
        if issued is not None and issued.moto_role_name != issued.base_role_arn.rsplit("/", 1)[-1]:
            base = issued.base_role_arn.rsplit("/", 1)[-1]
            out_body = out_body.replace(
                f"assumed-role/{issued.moto_role_name}/".encode(), f"assumed-role/{base}/".encode()
            )
        return status, out_headers, out_body


def _denied() -> StsError:
    return StsError(403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")


def _bootstrap_statement(bootstrap_arn: str) -> dict[str, Any]:
    return {
        "Sid": BOOTSTRAP_SID,
        "Effect": "Allow",
        "Principal": {"AWS": bootstrap_arn},
        "Action": "sts:AssumeRole",
    }


