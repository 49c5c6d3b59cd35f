"""The subject token: a JWT held as a secret, with its claims read (not verified) once."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jwt

from .errors import SourceMisconfigured
from .secret import Secret

__all__ = ["MAX_TOKEN_BYTES", "SubjectToken", "TokenGetter", "read_claims"]

#: The one size rule for a token (1 MiB, far above any real JWT): the file source refuses a
#: larger file, the verifier and ``keyless doctor`` a larger token, before decoding it.
MAX_TOKEN_BYTES = 1 << 20


def read_claims(raw: str, origin: str) -> dict[str, Any]:
    """Decode a JWT's payload without verifying it (the receiver verifies).

    Raises :class:`SourceMisconfigured` naming ``origin`` when ``raw`` is not a JWT.
    The message never contains the token.
    """
    try:
        claims = jwt.decode(raw, options={"verify_signature": False, "verify_exp": False,
                                          "verify_aud": False, "verify_iat": False,
                                          "verify_nbf": False})
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise SourceMisconfigured(
            f"{origin}: the token is not a JWT ({type(exc).__name__}); "
            "fix: point the source at an OIDC ID token or JWT access token"
        ) from None
    if not isinstance(claims, dict):
        raise SourceMisconfigured(f"{origin}: the token's payload is not a JSON object")
    return claims


def _finite_number(value: object) -> float | None:
    """``value`` as a finite float; None for bools, non-numbers, NaN, infinities and ints too
    large for a float (JSON allows all of them in a claim)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


@dataclasses.dataclass(frozen=True, repr=False)
class SubjectToken:
    """A JWT from a source.

    ``expires_at`` is the ``exp`` claim (epoch seconds). ``claims`` are decoded without
    verification, for audit and diagnostics only.
    """

    token: Secret
    expires_at: float
    claims: dict[str, Any]
    origin: str

    @classmethod
    def from_jwt(cls, raw: str, origin: str) -> SubjectToken:
        """Build from a raw JWT; ``exp`` is required (a token that never expires is refused)."""
        raw = raw.strip()
        claims = read_claims(raw, origin)
        exp = claims.get("exp")
        expires_at = _finite_number(exp)
        if expires_at is None:
            raise SourceMisconfigured(
                f"{origin}: the token has no finite numeric 'exp' claim; "
                "fix: use a source that issues expiring tokens"
            )
        return cls(token=Secret(raw), expires_at=expires_at, claims=claims, origin=origin)

    @property
    def fingerprint(self) -> str:
        return self.token.fingerprint

    @property
    def issuer(self) -> str | None:
        iss = self.claims.get("iss")
        return iss if isinstance(iss, str) else None

    @property
    def subject(self) -> str | None:
        sub = self.claims.get("sub")
        return sub if isinstance(sub, str) else None

    @property
    def audience(self) -> list[str]:
        aud = self.claims.get("aud")
        if isinstance(aud, str):
            return [aud]
        if isinstance(aud, list):
            return [a for a in aud if isinstance(a, str)]
        return []

    @property
    def issued_at(self) -> float | None:
        return _finite_number(self.claims.get("iat"))

    def __repr__(self) -> str:
        return (f"SubjectToken(origin={self.origin!r}, iss={self.issuer!r}, sub={self.subject!r}, "
                f"aud={self.audience!r}, exp={self.expires_at:.0f}, sha256={self.fingerprint})")


#: How an exchange gets subject tokens: ``tokens(audience)`` is a valid token for that aud
#: (``Keyless.subject_token``: cached and refreshed by its one owner, the refresher).
TokenGetter = Callable[[str], SubjectToken]
