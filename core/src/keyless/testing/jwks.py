"""The verifying fixtures' one way to an issuer's keys: discovery, then PyJWT's JWKS client.

The fixtures (the STS front's policy, the GCP STS) verify tokens with PyJWT, a library keyless
did not write, rather than with :mod:`keyless.verify`: a test would otherwise have keyless
check its own work. Loopback issuers only.
"""

from __future__ import annotations

import json
import urllib.request
from urllib.parse import urlsplit

import jwt

__all__ = ["LOOPBACK_HOSTS", "issuer_jwks_client"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def issuer_jwks_client(issuer: str) -> jwt.PyJWKClient:
    """A PyJWT JWKS client for ``issuer``'s keys, found through its discovery document; it
    fetches again on an unknown ``kid`` (no cooldown: a fixture follows key rotation at once).
    Raises :class:`jwt.PyJWKClientConnectionError` for a non-loopback issuer or a failed
    discovery."""
    parts = urlsplit(issuer)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK_HOSTS:
        raise jwt.PyJWKClientConnectionError("only loopback issuers")
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310 - loopback only
            jwks_uri = json.load(reply).get("jwks_uri")
    except (OSError, ValueError, AttributeError):
        raise jwt.PyJWKClientConnectionError("discovery failed") from None
    if not isinstance(jwks_uri, str):
        raise jwt.PyJWKClientConnectionError("no jwks_uri in the discovery document")
    return jwt.PyJWKClient(jwks_uri, cache_keys=False, lifespan=300, timeout=10,
                           cooldown_duration=0)
