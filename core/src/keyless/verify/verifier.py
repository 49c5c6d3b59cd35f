"""Verifying JWTs: OIDC discovery + a cooled-down JWKS cache + a claim policy.

Used by ``keyless doctor``, pre-flight checks and ingress (:mod:`keyless.verify.asgi`).

- :class:`JwksCache` fetches ``{issuer}/.well-known/openid-configuration``, then its
  ``jwks_uri``, and keeps the keys. A token whose ``kid`` is unknown triggers at most one JWKS
  refetch per ``cooldown_seconds`` (single-flight: concurrent callers wait for the one fetch),
  so a flood of forged ``kid`` values cannot turn the verifier into a JWKS hammer. Keys are
  also refetched on use once older than ``max_age_seconds`` (rotation that removes keys).
- :class:`Verifier` checks a token: ``alg`` from the configured allow-list (never from the
  token; ``none`` and HMAC algorithms are refused), signature through pyjwt with the JWKS key,
  then ``iss``, ``aud``, ``exp``/``nbf``/``iat`` (with leeway, against the injected clock) and
  the required claims. A refusal is :class:`~keyless.errors.TokenRejected` whose ``claim``
  names the claim at fault and whose message carries the facts and the fix, never the token.

Discovery/JWKS transport failures raise :class:`~keyless.errors.SourceUnavailable` (transient)
or :class:`~keyless.errors.SourceMisconfigured`; a bad verifier config raises
:class:`~keyless.errors.ConfigError`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import ipaddress
import json
import threading
from collections.abc import Callable, Sequence
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

from ..clock import Clock, SystemClock
from ..errors import ConfigError, KeylessError, SourceMisconfigured, TokenRejected
from ..http import json_object, raise_for_status, safe_url, send
from ..sources.base import default_http_client
from .claims import check_audience, check_issuer, check_required, check_times

__all__ = [
    "DEFAULT_ALGORITHMS",
    "JwksCache",
    "SigningKey",
    "Verifier",
    "check_audience",
    "check_issuer",
    "check_required",
    "check_times",
    "discovery_url",
    "parse_http_date",
    "unverified_parts",
]

#: The most clock skew a Verifier tolerates (its ``leeway_seconds``).
MAX_LEEWAY_SECONDS = 600.0
#: Asymmetric algorithms accepted by default. HMAC (``HS*``) and ``none`` are never accepted.
DEFAULT_ALGORITHMS: tuple[str, ...] = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                       "ES256", "ES384", "ES512", "EdDSA")
_KTY_FOR_ALG = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


def discovery_url(issuer: str) -> str:
    """The OIDC discovery document's URL for ``issuer``."""
    return f"{issuer.rstrip('/')}/.well-known/openid-configuration"


def parse_http_date(value: str | None) -> float | None:
    """An HTTP ``Date`` header as epoch seconds; None when absent or unparseable."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _check_fetch_url(component: str, url: str, allow_insecure_http: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    host = parts.hostname or ""
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if parts.scheme == "http" and loopback and allow_insecure_http:
        return
    raise SourceMisconfigured(
        f"{component}: {safe_url(url)!r} is not an https:// URL (http:// is allowed only for "
        "loopback, and only with allow_insecure_http); fix: use the issuer's https:// URL")


def unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and the claims of a compact JWS, not verified.

    Raises :class:`TokenRejected` (claim None) when ``token`` is not a JWT; never quotes it.
    """
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


@dataclasses.dataclass(frozen=True)
class SigningKey:
    """One JWKS signing key: ``kid`` ("" when absent), ``kty``, the ``alg`` the JWK declares
    (None when it declares none) and the pyjwt key."""

    kid: str
    kty: str
    alg: str | None
    jwk: jwt.PyJWK


class JwksCache:
    """An issuer's discovery document and signing keys, with a refetch cooldown.

    ``http`` makes the ``httpx.Client`` (injected in tests); ``clock`` drives the cooldown.
    After every discovery fetch, ``server_date`` is the issuer's HTTP ``Date`` (epoch seconds,
    None if absent) and ``local_time_at_date`` the local clock when that answer arrived.
    """

    def __init__(self, issuer: str, *, http: Callable[[], httpx.Client] = default_http_client,
                 clock: Clock | None = None, cooldown_seconds: float = 300.0,
                 max_age_seconds: float = 3600.0, allow_insecure_http: bool = False,
                 component: str = "verify") -> None:
        if not issuer:
            raise ConfigError("verify: issuer is empty; fix: give the issuer's URL", "issuer")
        self.issuer = issuer
        self.cooldown_seconds = cooldown_seconds
        self.max_age_seconds = max_age_seconds
        self.allow_insecure_http = allow_insecure_http
        self.component = component
        self._http = http
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._discovery: dict[str, Any] | None = None
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None
        self.server_date: float | None = None
        self.local_time_at_date: float | None = None

    def _get_json(self, url: str, what: str) -> tuple[dict[str, Any], httpx.Response]:
        _check_fetch_url(self.component, url, self.allow_insecure_http)
        response = send(self.component, self._http(), "GET", url)
        raise_for_status(self.component, response,
                         f"check that {safe_url(url)} is the issuer's {what}")
        body = json_object(response)
        if body is None:
            raise SourceMisconfigured(
                f"{self.component}: {safe_url(url)} did not answer a JSON object; fix: check "
                f"that it is the issuer's {what}")
        return body, response

    def discovery(self) -> dict[str, Any]:
        """The discovery document (fetched once); its ``issuer`` must equal ours.

        Once fetched, it is read without the lock (it is published by one assignment after
        it was checked, and never changes)."""
        document = self._discovery
        if document is not None:
            return document
        with self._lock:
            return self._discovery_locked()

    def _discovery_locked(self) -> dict[str, Any]:
        if self._discovery is not None:
            return self._discovery
        url = discovery_url(self.issuer)
        document, response = self._get_json(url, "OIDC discovery document")
        self.server_date = parse_http_date(response.headers.get("date"))
        self.local_time_at_date = self._clock.time()
        if not isinstance(document.get("jwks_uri"), str):
            raise SourceMisconfigured(f"{self.component}: {safe_url(url)} has no jwks_uri; "
                                      "fix: check the issuer URL")
        self._discovery = document
        return document

    def _refetch_locked(self) -> None:
        jwks_uri = str(self._discovery_locked()["jwks_uri"])
        self._fetched_at = self._clock.time()  # set first: a failed fetch also cools down
        body, _ = self._get_json(jwks_uri, "JWKS (jwks_uri)")
        keys: dict[str, SigningKey] = {}
        for entry in body.get("keys") or []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" \
                    or entry.get("kty") not in _KTY_FOR_ALG.values():
                continue  # encryption and symmetric ("oct") keys never verify a signature
            try:
                jwk = jwt.PyJWK(entry)
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                continue  # an unusable key (unknown crv, bad alg) must not hide the others
            kid = str(entry.get("kid") or "")
            alg = entry.get("alg")
            keys[kid] = SigningKey(kid=kid, kty=str(entry["kty"]),
                                   alg=alg if isinstance(alg, str) else None, jwk=jwk)
        self._keys = keys

    def keys(self) -> dict[str, SigningKey]:
        """The current signing keys by ``kid`` ("" for a key without one)."""
        with self._lock:
            if self._fetched_at is None:
                self._refetch_locked()
            return dict(self._keys)

    def key(self, kid: str | None) -> SigningKey:
        """The key for ``kid``. Unknown: refetch once if the cooldown allows, else refuse.

        A token without ``kid`` is accepted only when the JWKS holds exactly one key. The
        common case (keys fetched less than ``max_age_seconds`` ago, ``kid`` known) takes no
        lock: the key map is replaced by one assignment on refetch, never mutated.
        """
        fetched_at, keys = self._fetched_at, self._keys
        if fetched_at is not None and self._clock.time() - fetched_at < self.max_age_seconds:
            found = keys.get(kid) if kid else (
                next(iter(keys.values())) if len(keys) == 1 else None)
            if found is not None:
                return found
        with self._lock:
            now = self._clock.time()
            stale = self._fetched_at is None or now - self._fetched_at >= self.max_age_seconds
            if stale:
                try:
                    self._refetch_locked()
                except KeylessError:
                    if not self._keys:
                        raise  # nothing to fall back on; else keep serving the old keys
            found = self._find(kid)
            if found is None and not stale and self._fetched_at is not None \
                    and now - self._fetched_at >= self.cooldown_seconds:
                self._refetch_locked()
                found = self._find(kid)
            if found is not None:
                return found
            known = sorted(k for k in self._keys if k)
            raise TokenRejected(
                f"{self.component}: no signing key with kid={kid!r} at {self.issuer}'s JWKS "
                f"(known kids: {known}); fix: use a token from this issuer (keys are "
                f"refetched at most every {self.cooldown_seconds:.0f} s after a miss)",
                claim="kid")

    def _find(self, kid: str | None) -> SigningKey | None:
        if kid:
            return self._keys.get(kid)
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None


class Verifier:
    """Verifies JWTs from one issuer for a set of audiences.

    ``algorithms`` is the allow-list (the token's ``alg`` only selects from it);
    ``required_claims`` must be present; ``leeway_seconds`` applies to exp/nbf/iat.
    ``jwks`` shares a :class:`JwksCache`; otherwise one is made from ``http``/``clock``.
    """

    def __init__(self, issuer: str, audiences: str | Sequence[str], *,
                 algorithms: Sequence[str] = ("RS256", "ES256"),
                 required_claims: Sequence[str] = ("exp", "iat", "sub"),
                 leeway_seconds: float = 60.0, clock: Clock | None = None,
                 http: Callable[[], httpx.Client] = default_http_client,
                 jwks: JwksCache | None = None, cooldown_seconds: float = 300.0,
                 allow_insecure_http: bool = False) -> None:
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
                                      allow_insecure_http=allow_insecure_http)

    def verify_signature(self, token: str) -> dict[str, Any]:
        """Check ``alg`` and the signature only; return the claims (times etc. unchecked).

        The token is decoded once: only its header segment, unverified (to pick the key),
        then one ``jwt.decode`` with that key and the one allowed algorithm, which verifies
        the signature over that same header and the payload."""
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
        if key.kty != _KTY_FOR_ALG.get(alg[:2]) or (key.alg is not None and key.alg != alg):
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
            raise TokenRejected(f"verify: the signature does not verify with {self.issuer}'s key "
                                f"kid={kid!r}; fix: the token was altered or not signed by this "
                                "issuer", claim="signature") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise TokenRejected(f"verify: the token cannot be verified ({type(exc).__name__}); "
                                "fix: send a well-formed token signed by the issuer",
                                claim="signature") from None
        if not isinstance(claims, dict):
            raise TokenRejected("verify: the token's payload is not a JSON object")
        return claims

    def verify(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``, or :class:`TokenRejected` naming the claim."""
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
