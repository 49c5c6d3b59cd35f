"""``keyless doctor``: is this token (or this config) going to work, and if not, why?

``keyless doctor --config F`` takes the token from the configured source and ends with one
real (harmless) exchange per configured target; ``keyless doctor --token-file T [--issuer URL]
[--audience A]`` checks a token someone has. One line per check, ``ok`` / ``FAIL`` / ``warn`` /
``skip``, a fix on each failure; ``--json`` prints the same as one JSON object. Exit 0: no check
failed (warnings allowed); 1: a check failed; 2: bad usage or an unreadable config. The token
is never printed (only its sha256 fingerprint).

Which issuer doctor contacts: ``--issuer``, else the config's (``source.issuer``), and only
that one: a token whose ``iss`` differs fails the iss check, and its own ``iss`` host is never
contacted. With neither, doctor falls back to the token's unverified ``iss`` and first says
(on stderr) whose discovery document it is about to fetch.

Checks: token (present, a JWT, at most :data:`~keyless.tokens.MAX_TOKEN_BYTES` like every
token keyless reads), discovery (``{issuer}/.well-known/openid-configuration`` answers), clock
(skew of the local clock against the issuer's HTTP ``Date``), alg (not ``none``, not HMAC, the
JWKS key's ``alg`` or one the issuer advertises), signature (against the JWKS; a ``kid`` the
JWKS publishes more than once is named as the likely cause), iss (equals the discovery
document's ``issuer``), aud (``--audience`` or the config's target audience), time
(exp/nbf/iat against the local clock with leeway; a future ``iat`` is reported as clock skew),
lifetime (long enough to refresh ahead of expiry; with ``delivery.azure: token_file``, at
least azure-identity's 600 s file re-read), exchange (``--config``: each target's dry
run from :mod:`keyless.targets.registry`, e.g. AssumeRoleWithWebIdentity through
``Keyless(config).aws().credentials()``).

:func:`diagnose` is the library entry point; its ``clock``, ``http`` and ``announce`` are the
test hooks. The command line is :mod:`keyless.cli.doctor`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import httpx

from ..clock import Clock, SystemClock
from ..errors import KeylessError, TokenRejected
from ..http import safe_url
from ..identity import Keyless
from ..secret import fingerprint
from .verifier import (
    DEFAULT_ALGORITHMS,
    JwksCache,
    Verifier,
    check_audience,
    check_issuer,
    check_required,
    check_times,
    check_token_size,
    discovery_url,
    unverified_parts,
)

__all__ = ["AZURE_FILE_REREAD_SECONDS", "CHECK_NAMES", "REFRESH_MARGIN_SECONDS", "Check",
           "azure_file_problem", "configured_issuer", "diagnose", "target_audience"]

#: Every check, in the order a report lists them; docs/troubleshooting.md has a row for each.
CHECK_NAMES = ("token", "discovery", "clock", "alg", "signature", "iss", "aud", "time",
               "lifetime", "exchange")

#: Time a token must still have at exchange for a refresh ahead of expiry to be possible
#: (mandatory refresh window + leeway); a lifetime under twice this is a warning.
REFRESH_MARGIN_SECONDS = 60.0
#: azure-identity's ``WorkloadIdentityCredential`` re-reads ``AZURE_FEDERATED_TOKEN_FILE`` at
#: most this often (Azure/azure-sdk-for-python#44488).
AZURE_FILE_REREAD_SECONDS = 600.0


@dataclasses.dataclass(frozen=True)
class Check:
    """One line of the report. ``status`` is ``ok``, ``FAIL``, ``warn`` or ``skip``."""

    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name:<9} {self.detail}"


def target_audience(identity: Keyless) -> str | None:
    """The ``aud`` the first configured target's receiver expects: the target's own audience
    (its audience field, or its default: ``sts.amazonaws.com``, ``https:`` + the GCP provider,
    the Databricks workspace's token endpoint, the Hub ...). ``source.audience`` is what is
    asked of the IdP (an RFC 8707 resource, say), which may be another string."""
    targets = identity.config.target.configured()
    if not targets:
        return identity.default_audience()
    audience, _own = next(iter(targets.values())).token_audience()
    return audience


class _Report:
    def __init__(self) -> None:
        self.checks: list[Check] = []

    def add(self, name: str, status: str, detail: str) -> None:
        self.checks.append(Check(name, status, detail))

    def skip(self, names: str, why: str) -> None:
        for name in names.split():
            self.add(name, "skip", why)


def configured_issuer(identity: Keyless | None) -> str | None:
    """The issuer a config names (its source's ``issuer``), or None."""
    if identity is None:
        return None
    issuer = getattr(identity.config.source, "issuer", None)
    return issuer if isinstance(issuer, str) and issuer else None


def diagnose(token: str | None, *, token_origin: str, token_problem: str | None = None,
             issuer: str | None = None, audience: str | None = None,
             identity: Keyless | None = None, clock: Clock | None = None,
             http: Callable[[], httpx.Client] | None = None, leeway_seconds: float = 60.0,
             allow_insecure_http: bool = False,
             announce: Callable[[str], None] | None = None) -> list[Check]:
    """Run every check on ``token`` (None: ``token_problem`` says why there is none).

    Only ``issuer`` (else :func:`configured_issuer`) is contacted; with neither, the token's
    unverified ``iss`` is, after ``announce`` was told whose discovery is about to be fetched.
    """
    clock = clock or SystemClock()
    report = _Report()
    header: dict[str, Any] = {}
    claims: dict[str, Any] = {}
    if token is not None:
        try:
            check_token_size(token, "doctor")
            header, claims = unverified_parts(token)
        except TokenRejected as exc:
            token_problem = exc.message
    if token is None or token_problem is not None:
        report.add("token", "FAIL", f"{token_origin}: {token_problem or 'no token'}")
        report.skip("discovery clock alg signature iss aud time lifetime", "no token")
        _exchange(report, identity)
        return report.checks
    report.add("token", "ok", f"{token_origin}: sha256:{fingerprint(token)} alg="
               f"{header.get('alg')!r} kid={header.get('kid')!r} iss={claims.get('iss')!r} "
               f"sub={claims.get('sub')!r} aud={claims.get('aud')!r}")

    issuer, whose = _choose_issuer(issuer, identity, claims, announce)
    cache, document = _discovery(report, issuer, whose, clock, http, allow_insecure_http)
    skew = _clock_skew(report, cache, leeway_seconds)
    _alg_and_signature(report, token, header, cache, document, issuer)
    _iss(report, claims, document, issuer)
    expected = audience or (target_audience(identity) if identity is not None else None)
    if expected:
        _run(report, "aud", lambda: check_audience(claims, [expected], "doctor"),
             f"aud={claims.get('aud')!r} includes {expected!r}")
    else:
        report.add("aud", "skip", "no expected audience; fix: pass --audience")
    _times(report, claims, clock.time(), leeway_seconds, skew, identity)
    _exchange(report, identity)
    return report.checks


def _run(report: _Report, name: str, check: Callable[[], None], ok: str) -> bool:
    try:
        check()
    except TokenRejected as exc:
        report.add(name, "FAIL", exc.message)
        return False
    report.add(name, "ok", ok)
    return True


def _choose_issuer(issuer: str | None, identity: Keyless | None, claims: dict[str, Any],
                   announce: Callable[[str], None] | None) -> tuple[str | None, str]:
    """The issuer to contact and where it came from; announces a fallback to the token's."""
    if issuer:
        return issuer, "--issuer"
    configured = configured_issuer(identity)
    if configured:
        return configured, "the config's source.issuer"
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss:
        return None, "the token's iss"
    if announce is not None:
        announce(f"doctor: no --issuer and no issuer in the config: fetching the discovery "
                 f"document of the token's own (unverified) iss, {safe_url(discovery_url(iss))}"
                 "; pass --issuer URL to contact only the issuer you trust")
    return iss, "the token's iss"


def _discovery(report: _Report, issuer: str | None, whose: str, clock: Clock,
               http: Callable[[], httpx.Client] | None, allow_insecure_http: bool
               ) -> tuple[JwksCache | None, dict[str, Any] | None]:
    if not issuer:
        report.add("discovery", "FAIL", "the token has no iss and no --issuer was given; fix: "
                   "pass --issuer URL")
        return None, None
    cache = JwksCache(issuer, http=http or _doctor_client, clock=clock, fetch_wait_seconds=30.0,
                      allow_insecure_http=allow_insecure_http, component="doctor")
    try:
        document = cache.discovery()
    except KeylessError as exc:
        report.add("discovery", "FAIL", f"{safe_url(discovery_url(issuer))} does not answer: "
                   f"{exc.message}; fix: check the issuer URL ({whose}) and that it is "
                   "reachable; cloud STS services fetch it from the internet")
        return cache, None
    report.add("discovery", "ok", f"{safe_url(discovery_url(issuer))} answered (issuer="
               f"{document.get('issuer')!r}, jwks_uri={document.get('jwks_uri')!r})")
    return cache, document


_clients: list[httpx.Client] = []


def _doctor_client() -> httpx.Client:
    """One short-timeout client for the CLI run (doctor should not hang for long)."""
    if not _clients:
        _clients.append(httpx.Client(timeout=httpx.Timeout(5.0), follow_redirects=False))
    return _clients[0]


def _clock_skew(report: _Report, cache: JwksCache | None, leeway: float) -> float | None:
    if cache is None or cache.server_date is None or cache.local_time_at_date is None:
        report.add("clock", "skip", "no Date header from the issuer to compare with")
        return None
    skew = cache.local_time_at_date - cache.server_date
    where = "ahead of" if skew >= 0 else "behind"
    text = f"the local clock is {abs(skew):.0f} s {where} the issuer's (HTTP Date header)"
    if abs(skew) > leeway:
        report.add("clock", "FAIL", f"{text}, more than the {leeway:.0f} s leeway; fix: sync "
                   "this host's clock (NTP), or the issuer's")
    else:
        report.add("clock", "ok", text)
    return skew


def _alg_and_signature(report: _Report, token: str, header: dict[str, Any],
                       cache: JwksCache | None, document: dict[str, Any] | None,
                       issuer: str | None) -> None:
    alg = header.get("alg")
    kid = header.get("kid")
    if not isinstance(alg, str) or alg.lower() == "none":
        report.add("alg", "FAIL", "alg 'none': the token is unsigned and every receiver "
                   "refuses it; fix: get a token signed by the issuer")
        report.skip("signature", "alg none")
        return
    if alg not in DEFAULT_ALGORITHMS:
        report.add("alg", "FAIL", f"alg {alg!r} is not an asymmetric signature algorithm; fix: "
                   "federation needs a token signed with the issuer's public key (RS256/ES256)")
        report.skip("signature", "alg refused")
        return
    keys = {}
    keys_problem = ""
    if cache is not None and document is not None:
        try:
            keys = cache.keys()
        except KeylessError as exc:
            keys_problem = exc.message
    key = keys.get(kid) if isinstance(kid, str) else None
    advertised = (document or {}).get("id_token_signing_alg_values_supported")
    if key is not None and key.alg is not None:
        status = "ok" if key.alg == alg else "FAIL"
        report.add("alg", status, f"alg {alg!r}; the JWKS key {kid!r} declares {key.alg!r}"
                   + ("" if status == "ok" else "; fix: sign with the key's algorithm"))
    elif isinstance(advertised, list):
        status = "ok" if alg in advertised else "FAIL"
        report.add("alg", status, f"alg {alg!r}; the issuer advertises {advertised!r}"
                   + ("" if status == "ok" else "; fix: sign with an advertised algorithm"))
    else:
        report.add("alg", "ok", f"alg {alg!r} (the issuer advertises no algorithms)")
    if cache is None or document is None or not issuer:
        report.skip("signature", "no discovery document")
        return
    if keys_problem:
        report.add("signature", "FAIL", f"cannot fetch the JWKS: {keys_problem}")
        return
    verifier = Verifier(issuer, ["-"], algorithms=DEFAULT_ALGORITHMS, jwks=cache)
    _run(report, "signature", lambda: _ignore(verifier.verify_signature(token)),
         f"verified with the JWKS key kid={kid!r}")


def _ignore(_value: object) -> None:
    return None


def _iss(report: _Report, claims: dict[str, Any], document: dict[str, Any] | None,
         issuer: str | None) -> None:
    """``iss`` must equal the issuer doctor checks against, and so must the ``issuer`` its
    discovery document names (when it answered)."""
    if not issuer:
        report.add("iss", "skip", "no issuer to compare with")
        return
    advertised = (document or {}).get("issuer", issuer)

    def check() -> None:
        check_issuer(claims, issuer, "doctor")
        if advertised != issuer:
            raise TokenRejected(f"doctor: the discovery document of {issuer} names issuer "
                                f"{advertised!r}; fix: use the issuer exactly as its "
                                "discovery document spells it", claim="iss")

    _run(report, "iss", check, f"iss={claims.get('iss')!r} equals the issuer and its "
         "discovery document's issuer")


def azure_file_problem(identity: Keyless | None, lifetime: float) -> str | None:
    """Why ``target.azure`` would fail in a child, or None: delivered as the federated-token
    file (``delivery.azure: token_file``) with subject tokens living under
    :data:`AZURE_FILE_REREAD_SECONDS`, which azure-identity waits before re-reading it."""
    if identity is None or identity.config.target.azure is None \
            or identity.config.delivery.azure != "token_file" \
            or lifetime >= AZURE_FILE_REREAD_SECONDS:
        return None
    return (f"target.azure is delivered as AZURE_FEDERATED_TOKEN_FILE and the subject token "
            f"lives {lifetime:.0f} s: azure-identity re-reads that file only every "
            f"{AZURE_FILE_REREAD_SECONDS:.0f} s, so after {lifetime:.0f} s a child presents "
            "an expired assertion (AADSTS700024); fix: use the loopback managed-identity "
            "endpoint (delivery.azure: endpoint, the default)")


def _times(report: _Report, claims: dict[str, Any], now: float, leeway: float,
           skew: float | None, identity: Keyless | None = None) -> None:
    def check() -> None:
        try:
            check_times(claims, now, leeway, "doctor")
        except TokenRejected as exc:
            if exc.claim in ("iat", "nbf") and skew is not None:
                head, sep, fix = exc.message.partition("; fix:")
                raise TokenRejected(f"{head} (measured: the local clock is {skew:+.0f} s off "
                                    f"the issuer's Date header){sep}{fix}",
                                    claim=exc.claim) from None
            raise
        check_required(claims, ("exp", "iat", "sub"), "doctor")

    exp, iat = _seconds(claims.get("exp")), _seconds(claims.get("iat"))
    ok = _run(report, "time", check,
              f"expires in {exp - now:.0f} s, issued {now - iat:.0f} s ago"
              if exp is not None and iat is not None else "exp/nbf/iat valid")
    if not ok or exp is None or iat is None:
        report.skip("lifetime", "time check failed")
        return
    lifetime, remaining = exp - iat, exp - now
    azure = azure_file_problem(identity, lifetime)
    if lifetime < 2 * REFRESH_MARGIN_SECONDS or remaining < REFRESH_MARGIN_SECONDS:
        report.add("lifetime", "warn", f"lifetime {lifetime:.0f} s, {remaining:.0f} s left: "
                   f"under 2 x {REFRESH_MARGIN_SECONDS:.0f} s leaves no room to refresh ahead "
                   "of expiry; fix: issue tokens that live at least 5 minutes"
                   + (f"; and {azure}" if azure else ""))
    elif azure is not None:
        report.add("lifetime", "warn", azure)
    else:
        report.add("lifetime", "ok", f"lifetime {lifetime:.0f} s")


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _exchange(report: _Report, identity: Keyless | None) -> None:
    """One real exchange per configured target (the registry's dry runs), one check line."""
    from ..targets.registry import configured_kinds

    if identity is None:
        report.add("exchange", "skip", "dry-run exchange needs --config")
        return
    done: list[str] = []
    for kind, _spec in configured_kinds(identity):
        if kind.dry_run is None:
            continue
        try:
            done.append(f"{kind.name}: {kind.dry_run(identity)}")
        except KeylessError as exc:
            report.add("exchange", "FAIL", exc.message)
            return
    report.add("exchange", "ok", "; ".join(done))
