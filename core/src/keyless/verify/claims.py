"""The checks every verification makes, each raising :class:`~keyless.TokenRejected` naming
the claim and the fix: the token's size (:data:`~keyless.tokens.MAX_TOKEN_BYTES`, before any
decoding; claim None), ``iss``, ``aud``, the required claims and the times
(``exp``/``nbf``/``iat`` with leeway; a date that is not a finite number is rejected, not an
overflow)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import TokenRejected
from ..tokens import MAX_TOKEN_BYTES

__all__ = ["check_audience", "check_issuer", "check_required", "check_times",
           "check_token_size"]


def check_token_size(token: str, component: str = "verify") -> None:
    """Raise TokenRejected (claim None) when ``token`` is over :data:`MAX_TOKEN_BYTES` bytes
    of UTF-8; the size and the limit are named, the token never."""
    size = len(token) if token.isascii() else len(token.encode("utf-8", "surrogatepass"))
    if size > MAX_TOKEN_BYTES:
        raise TokenRejected(f"{component}: the token is {size} bytes, over the limit of "
                            f"{MAX_TOKEN_BYTES} bytes keyless sets for a token; fix: send the "
                            "JWT itself (a real one is a few KB), not whatever produced this")


def check_issuer(claims: Mapping[str, Any], expected: str, component: str = "verify") -> None:
    """Raise TokenRejected(claim="iss") unless ``iss`` equals ``expected`` exactly."""
    iss = claims.get("iss")
    if iss != expected:
        raise TokenRejected(f"{component}: iss={iss!r} is not the expected issuer {expected!r}; "
                            "fix: use a token from that issuer, or trust this one", claim="iss")


def check_audience(claims: Mapping[str, Any], audiences: Iterable[str],
                   component: str = "verify") -> None:
    """Raise TokenRejected(claim="aud") unless one of the token's ``aud`` is in ``audiences``."""
    wanted = list(audiences)
    aud = claims.get("aud")
    have = [aud] if isinstance(aud, str) else [a for a in aud if isinstance(a, str)] \
        if isinstance(aud, list) else []
    if not set(have) & set(wanted):
        raise TokenRejected(f"{component}: aud={have!r} does not match the expected audience "
                            f"{wanted!r}; fix: request the token for that audience (source "
                            "`audience`) or change the expected audience", claim="aud")


def _number(claims: Mapping[str, Any], name: str, component: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    try:
        number = float(value) if isinstance(value, (int, float)) \
            and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer too large for a float (10**400)
        number = math.nan
    if not math.isfinite(number):
        shown = repr(value) if not isinstance(value, int) or abs(value) < 10**30 \
            else "a number too large for a date"
        raise TokenRejected(f"{component}: {name}={shown} is not a number of epoch seconds; "
                            "fix: the issuer must send NumericDate claims", claim=name)
    return number


def check_required(claims: Mapping[str, Any], required: Iterable[str],
                   component: str = "verify") -> None:
    """Raise TokenRejected naming the first required claim that is missing."""
    for name in required:
        if claims.get(name) in (None, ""):
            raise TokenRejected(f"{component}: the token has no {name!r} claim, which is "
                                "required; fix: configure the issuer to include it", claim=name)


def check_times(claims: Mapping[str, Any], now: float, leeway: float,
                component: str = "verify") -> None:
    """``exp``/``nbf``/``iat`` against ``now`` with ``leeway`` seconds either way."""
    exp = _number(claims, "exp", component)
    if exp is not None and now > exp + leeway:
        raise TokenRejected(f"{component}: the token expired {now - exp:.0f} s ago (exp="
                            f"{exp:.0f}, leeway {leeway:.0f} s); fix: fetch a fresh token (or "
                            "check this host's clock)", claim="exp")
    nbf = _number(claims, "nbf", component)
    if nbf is not None and now + leeway < nbf:
        raise TokenRejected(f"{component}: the token is not valid for another {nbf - now:.0f} "
                            f"s (nbf={nbf:.0f}, leeway {leeway:.0f} s); fix: check the clocks "
                            "of this host and the issuer (clock skew)", claim="nbf")
    iat = _number(claims, "iat", component)
    if iat is not None and iat > now + leeway:
        raise TokenRejected(f"{component}: the token was issued {iat - now:.0f} s in the future "
                            f"(iat={iat:.0f}, leeway {leeway:.0f} s): clock skew between this "
                            "host and the issuer; fix: sync the clocks (NTP)", claim="iat")
