"""Verify: is a JWT what it claims to be. :mod:`.claims` (iss, aud, required, times) ->
:mod:`.verifier` (discovery, JWKS with a kid-miss cooldown, the :class:`Verifier`) ->
:mod:`.asgi` (ingress middleware) and :mod:`.doctor` (``keyless doctor``'s checks and
:func:`~.doctor.diagnose`)."""

from .verifier import (
    DEFAULT_ALGORITHMS,
    JwksCache,
    SigningKey,
    Verifier,
    check_audience,
    check_issuer,
    check_required,
    check_times,
    discovery_url,
    parse_http_date,
    unverified_parts,
)

__all__ = ["DEFAULT_ALGORITHMS", "JwksCache", "SigningKey", "Verifier", "check_audience",
           "check_issuer", "check_required", "check_times", "discovery_url", "parse_http_date",
           "unverified_parts"]
