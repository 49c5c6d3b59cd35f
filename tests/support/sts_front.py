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
   role itself, or, with a session policy, on a per-session role (see :mod:`sts_policy`);
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

import datetime as dt
import hashlib
import http.client
import json
import re
import threading
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

import jwt

from keyless.clock import Clock, SystemClock
from keyless.errors import KeylessError

__all__ = ["IssuedCredentials", "StsError", "StsFront", "TokenVerifier"]

Headers = list[tuple[str, str]]
Reply = tuple[int, Headers, bytes]
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


class StsFront:
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
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> StsFront:
        """Listen on a free loopback port and serve in a daemon thread."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.front = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="sts-front", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> StsFront:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the front."""
        if self._server is None:
            raise KeylessError("sts-front: not started; call start() first")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

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
        """Recent forwarded requests made with issued credentials (session, service, path)."""
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
        params = _query_params(method, path, headers, body)
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
        return _web_identity_reply(creds, expiration, role, session, claims, audience, provider_arn)

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
        authorization = _header(headers, "authorization")
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
            }
            with self._lock:
                self._forwarded.append(entry)
                if entry["expired"]:
                    self._expired_uses.append(entry)
            if entry["expired"] and self.reject_expired:
                if service == "s3":
                    return _s3_expired_reply()
                return error_reply(
                    403, "ExpiredToken", "The security token included in the request is expired"
                )
        status, out_headers, out_body = _forward_to(self.moto_url, method, path, headers, body)
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


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(int(epoch), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _x(text: object) -> str:
    return escape(str(text))


def _web_identity_reply(
    creds: dict[str, Any],
    expiration: float,
    role: dict[str, Any],
    session: str,
    claims: dict[str, Any],
    audience: str,
    provider_arn: str,
) -> Reply:
    account = role["Arn"].split(":")[4]
    arn = f"arn:aws:sts::{account}:assumed-role/{role['RoleName']}/{session}"
    body = (
        '<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        "<AssumeRoleWithWebIdentityResult>"
        f"<SubjectFromWebIdentityToken>{_x(claims.get('sub', ''))}</SubjectFromWebIdentityToken>"
        f"<Audience>{_x(audience)}</Audience>"
        f"<AssumedRoleUser><Arn>{_x(arn)}</Arn>"
        f"<AssumedRoleId>{_x(role['RoleId'])}:{_x(session)}</AssumedRoleId></AssumedRoleUser>"
        "<Credentials>"
        f"<SessionToken>{_x(creds['SessionToken'])}</SessionToken>"
        f"<SecretAccessKey>{_x(creds['SecretAccessKey'])}</SecretAccessKey>"
        f"<Expiration>{_iso(expiration)}</Expiration>"
        f"<AccessKeyId>{_x(creds['AccessKeyId'])}</AccessKeyId>"
        "</Credentials>"
        f"<Provider>{_x(provider_arn)}</Provider>"
        "</AssumeRoleWithWebIdentityResult>"
        f"<ResponseMetadata><RequestId>{_request_id()}</RequestId></ResponseMetadata>"
        "</AssumeRoleWithWebIdentityResponse>"
    ).encode()
    return 200, [("Content-Type", "text/xml")], body


def _request_id() -> str:
    return str(uuid.uuid4())


def _s3_expired_reply() -> Reply:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ExpiredToken</Code>'
        "<Message>The provided token has expired.</Message>"
        f"<RequestId>{_request_id()}</RequestId></Error>"
    ).encode()
    return 400, [("Content-Type", "application/xml")], body


# --------------------------------------------------------------------- token verification
_NOT_JWT = ("The ID Token provided is not a valid JWT. (You may see this error if you sent "
            "an Access Token)")
_NO_KEY = ("Couldn't retrieve verification key from your identity provider,  please reference "
           "AssumeRoleWithWebIdentity documentation for requirements")
_UNREACHABLE = ("The request could not be fulfilled because the identity provider (IDP) that "
                "was asked to verify the incoming identity token could not be reached.")
_ALGORITHMS = {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class StsError(Exception):
    """An STS error answer: HTTP status, error code, message and fault type."""

    def __init__(self, status: int, code: str, message: str, type_: str = "Sender") -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.type = status, code, message, type_


def _invalid(message: str) -> StsError:
    return StsError(400, "InvalidIdentityToken", message)


class TokenVerifier:
    """Verify a web-identity JWT against the OIDC providers registered in moto's IAM.

    :meth:`verify` returns ``(claims, provider_arn, matched_audience)`` or raises
    :class:`StsError`. JWKS clients are cached per issuer (PyJWKClient refetches on an unknown
    ``kid``, with its cooldown). Only loopback issuers are contacted.
    """

    def __init__(self, iam: Any, account_id: str, now: Callable[[], float],
                 leeway_seconds: float = 0.0) -> None:
        self._iam, self._account_id, self._now, self._leeway = iam, account_id, now, leeway_seconds
        self._jwks: dict[str, jwt.PyJWKClient] = {}
        self._lock = threading.Lock()

    def verify(self, token: str) -> tuple[dict[str, Any], str, str]:
        try:
            header = jwt.get_unverified_header(token)
            claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _invalid(_NOT_JWT) from None
        iss = claims.get("iss")
        if not isinstance(iss, str) or not iss:
            raise _invalid(_NOT_JWT)
        provider_arn = (f"arn:aws:iam::{self._account_id}:oidc-provider/"
                        + re.sub(r"^https?://", "", iss).rstrip("/"))
        try:
            provider = self._iam.get_open_id_connect_provider(
                OpenIDConnectProviderArn=provider_arn)
        except self._iam.exceptions.ClientError:
            raise _invalid(f"No OpenIDConnect provider found in your account for {iss}") from None
        alg = header.get("alg")
        if alg not in _ALGORITHMS:
            raise _invalid(_NOT_JWT)
        key = self._signing_key(iss, token)
        try:
            jwt.decode(token, key, algorithms=[str(alg)], options={
                "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                "verify_aud": False, "verify_iss": False})
        except jwt.InvalidSignatureError:
            raise _invalid("The signature of the web identity token could not be verified "
                           "with the identity provider's keys") from None
        except jwt.PyJWTError:
            raise _invalid(_NOT_JWT) from None
        now, exp, nbf = self._now(), claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int | float):
            raise _invalid(_NOT_JWT)
        if now >= exp + self._leeway:
            raise StsError(400, "ExpiredTokenException", f"Token expired: current date/time "
                           f"{int(now)} must be before the expiration date/time {int(exp)}")
        if isinstance(nbf, int | float) and now + self._leeway < nbf:
            raise _invalid(f"Token is not yet valid: current date/time {int(now)} must be "
                           f"after the not-before date/time {int(nbf)}")
        auds = claims.get("aud")
        auds = [auds] if isinstance(auds, str) else list(auds or [])
        client_ids = provider.get("ClientIDList", [])
        audience = next((a for a in auds if a in client_ids), None)
        if audience is None:
            raise _invalid("Incorrect token audience")
        return claims, provider_arn, audience

    def _signing_key(self, iss: str, token: str) -> Any:
        if urlsplit(iss).hostname not in _LOOPBACK:
            raise StsError(400, "IDPCommunicationError", _UNREACHABLE)
        with self._lock:
            client = self._jwks.get(iss)
        if client is None:
            try:
                url = iss.rstrip("/") + "/.well-known/openid-configuration"
                with urllib.request.urlopen(url, timeout=10) as r:
                    jwks_uri = json.load(r).get("jwks_uri")
            except (OSError, ValueError):
                raise StsError(400, "IDPCommunicationError", _UNREACHABLE) from None
            if not isinstance(jwks_uri, str):
                raise _invalid(_NO_KEY)
            client = jwt.PyJWKClient(jwks_uri, cache_keys=False, lifespan=300, timeout=10,
                                     cooldown_duration=0)  # refetch on any unknown kid
            with self._lock:
                self._jwks[iss] = client
        try:
            return client.get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientConnectionError:
            with self._lock:
                self._jwks.pop(iss, None)
            raise StsError(400, "IDPCommunicationError", _UNREACHABLE) from None
        except jwt.PyJWTError:
            raise _invalid(_NO_KEY) from None


# --------------------------------------------------------------------- policies
def _listify(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, str | dict) else list(value)


def _wild(pattern: str, value: str, ignore_case: bool = False) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


def _conditions_hold(conditions: dict[str, Any], context: dict[str, list[str]]) -> bool:
    """IAM string conditions (Equals/Like/NotEquals/NotLike/EqualsIgnoreCase, IfExists,
    ForAnyValue:/ForAllValues:) over ``context`` (lower-cased keys); unknown operators fail."""
    for raw_op, pairs in conditions.items():
        qualifier, _, op = raw_op.rpartition(":")
        if_exists = op.endswith("IfExists")
        op = op.removesuffix("IfExists")
        negated = op.startswith("StringNot")
        base = op.replace("Not", "", 1) if negated else op
        if base == "StringEquals":
            def match(a: str, e: str) -> bool:
                return a == e
        elif base == "StringLike":
            def match(a: str, e: str) -> bool:
                return _wild(e, a)
        elif base == "StringEqualsIgnoreCase":
            def match(a: str, e: str) -> bool:
                return a.lower() == e.lower()
        else:
            return False
        for key, expected in pairs.items():
            actual = context.get(key.lower())
            if actual is None:
                if not (if_exists or negated):
                    return False
                continue
            wanted = [str(e) for e in _listify(expected)]
            if qualifier == "ForAllValues":
                hit = all(any(match(a, e) for e in wanted) for a in actual)
            else:
                hit = any(match(a, e) for a in actual for e in wanted)
            if hit == negated:
                return False
    return True


def trust_allows(trust: dict[str, Any], provider_arn: str, claims: dict[str, Any]) -> bool:
    """Whether ``trust`` lets a token of ``provider_arn`` with ``claims`` assume the role."""
    url = provider_arn.split(":oidc-provider/", 1)[1]
    context = {f"{url}:aud".lower(): [str(a) for a in _listify(claims.get("aud"))],
               f"{url}:sub".lower(): [str(claims.get("sub", ""))],
               f"{url}:iss".lower(): [str(claims.get("iss", ""))]}
    allowed = False
    for st in _listify(trust.get("Statement")):
        principal = st.get("Principal") or {}
        federated = _listify(principal.get("Federated")) if isinstance(principal, dict) else []
        if provider_arn not in federated:
            continue
        if not any(_wild(a, "sts:AssumeRoleWithWebIdentity", True)
                   for a in _listify(st.get("Action"))):
            continue
        if not _conditions_hold(st.get("Condition") or {}, context):
            continue
        if st.get("Effect") == "Deny":
            return False
        allowed = allowed or st.get("Effect") == "Allow"
    return allowed


def _document(doc: Any) -> dict[str, Any]:
    return json.loads(doc) if isinstance(doc, str) else dict(doc)


def _managed_document(iam: Any, arn: str) -> dict[str, Any]:
    version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    return _document(iam.get_policy_version(PolicyArn=arn, VersionId=version)
                     ["PolicyVersion"]["Document"])


def session_role_policy(iam: Any, role_name: str, policy: str | None,
                        policy_arns: list[str]) -> dict[str, Any]:
    """The permission policy of a per-session role: base role ∩ session policies.

    Kept: the base role's unconditional Deny statements, the session policies' Deny
    statements, and each session Allow (action, resource) pair that an unconditional base
    Allow statement covers (the session pattern matched literally against the base pattern).
    Dropped: statements with Condition, NotAction or NotResource (moto cannot evaluate them).
    """
    base: list[dict[str, Any]] = []
    for name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
        base += _listify(_document(iam.get_role_policy(RoleName=role_name, PolicyName=name)
                                   ["PolicyDocument"]).get("Statement"))
    for att in iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]:
        base += _listify(_managed_document(iam, att["PolicyArn"]).get("Statement"))
    session = _listify(_document(policy).get("Statement")) if policy is not None else []
    for arn in policy_arns:
        session += _listify(_managed_document(iam, arn).get("Statement"))

    def plain(st: dict[str, Any]) -> bool:
        return not ({"Condition", "NotAction", "NotResource"} & st.keys())

    allows = [s for s in base if s.get("Effect") == "Allow" and plain(s)]
    out = [s for s in base if s.get("Effect") == "Deny" and plain(s)]
    for st in filter(plain, session):
        if st.get("Effect") == "Deny":
            out.append(st)
            continue
        for action in _listify(st.get("Action")):
            kept = [r for r in _listify(st.get("Resource")) if any(
                any(_wild(p, action, True) for p in _listify(b.get("Action")))
                and any(_wild(p, r) for p in _listify(b.get("Resource"))) for b in allows)]
            if kept:
                out.append({"Effect": "Allow", "Action": action, "Resource": kept})
    if not any(s.get("Effect") == "Allow" for s in out):
        out.append({"Effect": "Deny", "Action": "*", "Resource": "*"})
    return {"Version": "2012-10-17", "Statement": out}


# --------------------------------------------------------------------- HTTP plumbing
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "expect", "content-length"}


def _header(headers: Headers, name: str) -> str:
    return next((v for k, v in headers if k.lower() == name), "")


def _query_params(method: str, path: str, headers: Headers, body: bytes) -> dict[str, str]:
    """Query-protocol parameters of a request to ``/`` (query string and form body)."""
    target, _, query = path.partition("?")
    if target != "/":
        return {}
    params = dict(parse_qsl(query, keep_blank_values=True))
    if method == "POST" and "x-www-form-urlencoded" in _header(headers, "content-type"):
        params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return params


def error_reply(status: int, code: str, message: str, type_: str = "Sender") -> Reply:
    """An STS (query protocol) XML error answer."""
    body = ('<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            f"<Error><Type>{type_}</Type><Code>{_x(code)}</Code><Message>{_x(message)}</Message>"
            f"</Error><RequestId>{_request_id()}</RequestId></ErrorResponse>").encode()
    return status, [("Content-Type", "text/xml")], body


def _forward_to(base_url: str, method: str, path: str, headers: Headers, body: bytes) -> Reply:
    """Send the request to ``base_url`` unchanged (Host kept) and return moto's answer."""
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=120)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers:
            if k.lower() not in _HOP:
                conn.putheader(k, v)
        if body or method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        resp = conn.getresponse()
        data = resp.read()
        out = [(k, v) for k, v in resp.getheaders()
               if k.lower() not in _HOP or (method == "HEAD" and k.lower() == "content-length")]
        return resp.status, out, data
    finally:
        conn.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sts-front"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: requests may carry tokens in their bodies, never log them."""

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        body = self._read_body()
        front: StsFront = self.server.front  # type: ignore[attr-defined]
        try:
            status, headers, out = front.handle(self.command, self.path,
                                                list(self.headers.items()), body)
        except Exception as e:  # the fixture must answer, whatever broke
            status, headers, out = error_reply(500, "InternalFailure",
                                               f"sts-front: {type(e).__name__}: {e}", "Receiver")
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(out)))
        elif not any(k.lower() == "content-length" for k, _ in headers):
            self.send_header("Content-Length", "0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _serve
