"""How the verifying STS front judges a request: web-identity token verification (as AWS does
it) and IAM policy evaluation (trust policies, session-policy intersection).

:class:`TokenVerifier` checks a JWT against the OIDC providers registered in moto's IAM:
issuer registered, signature against the issuer's JWKS (loopback issuers only, found through
discovery), ``exp``/``nbf`` against an injected clock, ``aud`` in the provider's client ids.
:func:`trust_allows` evaluates a role's trust policy for those claims;
:func:`session_role_policy` computes (base role) ∩ (session policies) as one permission
policy that moto can enforce. Failures are :class:`StsError` (STS's code, message, status).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any

import jwt

from .jwks import issuer_jwks_client

__all__ = ["StsError", "TokenVerifier", "session_role_policy", "trust_allows"]

_NOT_JWT = ("The ID Token provided is not a valid JWT. (You may see this error if you sent "
            "an Access Token)")
_NO_KEY = ("Couldn't retrieve verification key from your identity provider,  please reference "
           "AssumeRoleWithWebIdentity documentation for requirements")
_UNREACHABLE = ("The request could not be fulfilled because the identity provider (IDP) that "
                "was asked to verify the incoming identity token could not be reached.")
_ALGORITHMS = {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}


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
        with self._lock:
            client = self._jwks.get(iss)
        if client is None:
            try:
                client = issuer_jwks_client(iss)
            except jwt.PyJWKClientConnectionError:
                raise StsError(400, "IDPCommunicationError", _UNREACHABLE) from None
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

