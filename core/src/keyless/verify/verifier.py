"""Verifying JWTs: OIDC discovery + a JWKS cache with backoff and cooldown + a claim policy.

Used by ``keyless doctor``, pre-flight checks and ingress (:mod:`keyless.verify.asgi`).

- :class:`~keyless.verify.jwks.JwksCache` fetches and keeps the issuer's discovery document and
  keys: single-flight fetches that no caller waits on for more than ``fetch_wait_seconds``,
  failed fetches retried with bounded exponential backoff, an unknown ``kid`` refetched at most
  once per ``cooldown_seconds`` after a successful fetch (its module docstring is the
  contract).
- :class:`Verifier` checks a token: its size first (at most
  :data:`~keyless.tokens.MAX_TOKEN_BYTES`, before any decoding), ``alg`` from the configured
  allow-list (never from the token; ``none`` and HMAC algorithms are refused), signature
  through pyjwt with the JWKS key, then ``iss``, ``aud``, ``exp``/``nbf``/``iat`` (with
  leeway, against the injected clock) and the required claims. A refusal is
  :class:`~keyless.errors.TokenRejected` whose ``claim`` names the claim at fault and whose
  message carries the facts and the fix, never the token.

When the issuer's keys cannot be had, verification raises
:class:`~keyless.errors.SourceUnavailable` (transient; its subclass
:class:`~keyless.verify.jwks.IssuerUnavailable` says when the issuer is tried next) or
:class:`~keyless.errors.SourceMisconfigured`, never ``TokenRejected``; a bad verifier config
raises :class:`~keyless.errors.ConfigError`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import jwt

from ..clock import Clock, SystemClock
from ..errors import ConfigError, TokenRejected
from ..sources.base import default_http_client
from .claims import check_audience, check_issuer, check_required, check_times, check_token_size
from .jwks import (
    KTY_FOR_ALG,
    IssuerUnavailable,
    JwksCache,
    SigningKey,
    discovery_url,
    parse_http_date,
)

__all__ = [
    "DEFAULT_ALGORITHMS",
    "IssuerUnavailable",
    "JwksCache",
    "SigningKey",
    "Verifier",
    "check_audience",
    "check_issuer",
    "check_required",
    "check_times",
    "check_token_size",
    "discovery_url",
    "parse_http_date",
    "unverified_parts",
]

#: The most clock skew a Verifier tolerates (its ``leeway_seconds``).
MAX_LEEWAY_SECONDS = 600.0
#: Asymmetric algorithms accepted by default. HMAC (``HS*``) and ``none`` are never accepted.
DEFAULT_ALGORITHMS: tuple[str, ...] = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                       "ES256", "ES384", "ES512", "EdDSA")


def unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and the claims of a compact JWS, not verified.

    Raises :class:`TokenRejected` (claim None) when ``token`` is over the size limit or not a
    JWT; never quotes it.
    """
    check_token_size(token)
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False,
                                            "verify_aud": False, "verify_iat": False,
                                            "verify_nbf": False, "verify_iss": False})
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise TokenRejected(f"verify: the token is not a JWT ({type(exc).__name__}); fix: send "
                            "a compact JWS (header.payload.signature)") from None
    if not isinstance(claims, dict) or not isinstance(header, dict):
        raise TokenRejected("verify: the token's payload is not a JSON object")
    return header, claims


def _unverified_header(token: str) -> dict[str, Any]:
    """The header of a compact JWS, decoding only its first segment (not verified)."""
    try:
        segment, rest = token.split(".", 1)
        if rest.count(".") != 1:
            raise ValueError("not three segments")
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, TypeError, AttributeError, binascii.Error) as exc:
        raise TokenRejected(f"verify: the token is not a JWT ({type(exc).__name__}); fix: send "
                            "a compact JWS (header.payload.signature)") from None
    if not isinstance(header, dict):
        raise TokenRejected("verify: the token's header is not a JSON object")
    return header


class Verifier:
    """Verifies JWTs from one issuer for a set of audiences.

    ``algorithms`` is the allow-list (the token's ``alg`` only selects from it);
    ``required_claims`` must be present; ``leeway_seconds`` applies to exp/nbf/iat.
    ``jwks`` shares a :class:`JwksCache`; otherwise one is made from ``http``/``clock``,
    ``cooldown_seconds`` and ``fetch_wait_seconds`` (the longest a verification waits for the
    issuer's keys before it raises :class:`IssuerUnavailable`).
    """

    def __init__(self, issuer: str, audiences: str | Sequence[str], *,
                 algorithms: Sequence[str] = ("RS256", "ES256"),
                 required_claims: Sequence[str] = ("exp", "iat", "sub"),
                 leeway_seconds: float = 60.0, clock: Clock | None = None,
                 http: Callable[[], httpx.Client] = default_http_client,
                 jwks: JwksCache | None = None, cooldown_seconds: float = 300.0,
                 allow_insecure_http: bool = False, fetch_wait_seconds: float = 2.0) -> None:
        self.issuer = issuer
        self.audiences = (audiences,) if isinstance(audiences, str) else tuple(audiences)
        if not self.audiences:
            raise ConfigError("verify: no audience given; fix: pass the audience(s) this "
                              "service accepts", "audiences")
        bad = [a for a in algorithms if a not in DEFAULT_ALGORITHMS]  # none, HS*, nonsense
        if bad or not algorithms:
            raise ConfigError(f"verify: algorithms {bad or list(algorithms)!r} not allowed; fix: "
                              f"use asymmetric ones from {list(DEFAULT_ALGORITHMS)}", "algorithms")
        self.algorithms = tuple(algorithms)
        self.required_claims = tuple(required_claims)
        if not 0.0 <= leeway_seconds <= MAX_LEEWAY_SECONDS:  # NaN fails too
            raise ConfigError(f"verify: leeway_seconds={leeway_seconds!r} is out of range; fix: "
                              f"give 0 to {MAX_LEEWAY_SECONDS:.0f} seconds (clock skew between "
                              "issuer and this host, not token lifetime)", "leeway_seconds")
        self.leeway_seconds = leeway_seconds
        self.clock: Clock = clock or SystemClock()
        self.jwks = jwks or JwksCache(issuer, http=http, clock=self.clock,
                                      cooldown_seconds=cooldown_seconds,
                                      allow_insecure_http=allow_insecure_http,
                                      fetch_wait_seconds=fetch_wait_seconds)

    def verify_signature(self, token: str) -> dict[str, Any]:
        """Check ``alg`` and the signature only; return the claims (times etc. unchecked).

        The token is decoded once: only its header segment, unverified (to pick the key),
        then one ``jwt.decode`` with that key and the one allowed algorithm, which verifies
        the signature over that same header and the payload. A token over
        :data:`~keyless.tokens.MAX_TOKEN_BYTES` is refused before any decoding."""
        check_token_size(token)
        header = _unverified_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise TokenRejected("verify: alg 'none' (an unsigned token) is refused; fix: send "
                                "a token signed by the issuer", claim="alg")
        if alg not in self.algorithms:
            raise TokenRejected(f"verify: alg {alg!r} is not in the allowed algorithms "
                                f"{list(self.algorithms)}; fix: have the issuer sign with one "
                                "of them, or allow its algorithm", claim="alg")
        kid = header.get("kid")
        key = self.jwks.key(kid if isinstance(kid, str) else None)
        if key.kty != KTY_FOR_ALG.get(alg[:2]) or (key.alg is not None and key.alg != alg):
            raise TokenRejected(f"verify: alg {alg!r} does not fit the key kid={kid!r} "
                                f"(kty {key.kty}, alg {key.alg!r}); fix: the token must be "
                                "signed with the key's algorithm", claim="alg")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.jwk.key, algorithms=[alg],
                options={"verify_signature": True, "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False, "verify_aud": False, "verify_iss": False,
                         "require": []})
        except jwt.InvalidSignatureError:
            raise TokenRejected(self._bad_signature(kid), claim="signature") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise TokenRejected(f"verify: the token cannot be verified ({type(exc).__name__}); "
                                "fix: send a well-formed token signed by the issuer",
                                claim="signature") from None
        if not isinstance(claims, dict):
            raise TokenRejected("verify: the token's payload is not a JSON object")
        return claims

    def _bad_signature(self, kid: object) -> str:
        """Why a signature failed; names a ``kid`` the JWKS publishes more than once."""
        if isinstance(kid, str) and kid in self.jwks.duplicate_kids:
            return (f"verify: the signature does not verify with {self.issuer}'s key "
                    f"kid={kid!r}, and the issuer's JWKS publishes several keys with "
                    f"kid={kid!r} (only the last is used): the token may be signed by a "
                    "shadowed one; fix: the issuer must give every key its own kid")
        return (f"verify: the signature does not verify with {self.issuer}'s key kid={kid!r}; "
                "fix: the token was altered or not signed by this issuer")

    def verify(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``, or :class:`TokenRejected` naming the claim;
        :class:`~keyless.errors.SourceUnavailable` (or ``SourceMisconfigured``) when the
        issuer's keys cannot be had (see :class:`JwksCache`)."""
        claims = self.verify_signature(token)
        check_issuer(claims, self.issuer)
        advertised = self.jwks.discovery().get("issuer")
        if advertised != self.issuer:
            raise TokenRejected(f"verify: the discovery document of {self.issuer} names issuer "
                                f"{advertised!r}; fix: configure the issuer exactly as its "
                                "discovery document spells it", claim="iss")
        check_audience(claims, self.audiences)
        check_times(claims, self.clock.time(), self.leeway_seconds)
        check_required(claims, self.required_claims)
        return claims
