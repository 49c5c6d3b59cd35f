"""Turn STS answers into keyless errors that name the claim at fault and the fix."""

from __future__ import annotations

from typing import Any

from ..errors import ExchangeFailed, KeylessError, TokenRejected
from ..http import scrub
from ..tokens import SubjectToken

__all__ = ["translate_sts_error"]

_RETRYABLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "IDPCommunicationError", "ServiceUnavailable", "InternalFailure", "InternalError",
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
})


def _facts(token: SubjectToken | None) -> str:
    if token is None:
        return ""
    return (f" (token iss={token.issuer!r} sub={token.subject!r} aud={token.audience!r}"
            f" sha256={token.fingerprint})")


def translate_sts_error(exc: BaseException, *, role_arn: str,
                        token: SubjectToken | None) -> KeylessError:
    """Map a botocore error from AssumeRoleWithWebIdentity to TokenRejected / ExchangeFailed."""
    if isinstance(exc, KeylessError):
        return exc
    response: dict[str, Any] = getattr(exc, "response", None) or {}
    error = response.get("Error", {}) if isinstance(response, dict) else {}
    code = str(error.get("Code", "")) if error else ""
    message = scrub(str(error.get("Message", ""))) if error else ""
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") if response else None
    facts = _facts(token)
    head = f"aws-sts: AssumeRoleWithWebIdentity for {role_arn} failed"
    if not code:
        return ExchangeFailed(f"{head}: {type(exc).__name__}: {scrub(str(exc))}; "
                              "fix: check sts_endpoint_url / AWS_ENDPOINT_URL_STS and the network",
                              retryable=True)
    lowered = message.lower()
    if code == "ExpiredTokenException" or "expired" in lowered:
        return TokenRejected(f"{head}: {code}: {message}{facts}; the token's 'exp' has passed; "
                             "fix: refresh the source sooner or check the clock", claim="exp")
    if code == "InvalidIdentityToken":
        if "audience" in lowered:
            return TokenRejected(
                f"{head}: {code}: {message}{facts}; the token's 'aud' is not a client ID of the "
                "IAM OIDC provider; fix: request the audience the provider lists (target.aws."
                "audience, default sts.amazonaws.com) or add it to the provider's client IDs",
                claim="aud")
        if "issuer" in lowered or "no openid" in lowered:
            return TokenRejected(
                f"{head}: {code}: {message}{facts}; the token's 'iss' is not a registered IAM "
                "OIDC provider; fix: create the provider for this issuer", claim="iss")
        if "nbf" in lowered or "not yet valid" in lowered or "before" in lowered:
            return TokenRejected(f"{head}: {code}: {message}{facts}; fix: check the clock",
                                 claim="nbf")
        return TokenRejected(
            f"{head}: {code}: {message}{facts}; the token's signature could not be verified "
            "against the issuer's JWKS; fix: make sure the token comes from the issuer the "
            "provider trusts and its JWKS is reachable", claim="signature")
    if code == "AccessDenied":
        return TokenRejected(
            f"{head}: {code}: {message}{facts}; the role's trust policy does not accept this "
            "token; fix: make the trust policy's conditions on '<issuer>:sub' and "
            "'<issuer>:aud' match the token's sub and aud", claim="sub")
    retryable = code in _RETRYABLE_CODES or (isinstance(status, int) and status >= 500)
    return ExchangeFailed(f"{head}: {code}: {message}{facts}", retryable=retryable)
