"""Verify: is a JWT what it claims to be. :mod:`.claims` (size, iss, aud, required, times) ->
:mod:`.jwks` (discovery and JWKS: single-flight fetches, failure backoff, kid-miss cooldown) ->
:mod:`.verifier` (the :class:`Verifier`) -> :mod:`.asgi` (ingress middleware) and
:mod:`.doctor` (``keyless doctor``'s checks and :func:`~.doctor.diagnose`)."""

from .verifier import (
    DEFAULT_ALGORITHMS,
    IssuerUnavailable,
    JwksCache,
    SigningKey,
    Verifier,
    check_audience,
    check_issuer,
    check_required,
    check_times,
    check_token_size,
    discovery_url,
    parse_http_date,
    unverified_parts,
)

__all__ = ["DEFAULT_ALGORITHMS", "IssuerUnavailable", "JwksCache", "SigningKey", "Verifier",
           "check_audience", "check_issuer", "check_required", "check_times",
           "check_token_size", "discovery_url", "parse_http_date", "unverified_parts"]
