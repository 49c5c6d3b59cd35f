"""An issuer's discovery document and signing keys: :class:`JwksCache`.

Contract:

- **Fetch.** A *fetch* is ``{issuer}/.well-known/openid-configuration`` (once; it is kept after
  it first answers) then its ``jwks_uri``. Fetches are single flight: at most one runs at a
  time, in its own daemon thread, so no caller is held by the HTTP client's timeout.
- **Fast path.** A known ``kid`` in keys younger than ``max_age_seconds`` takes no lock and
  never waits. A known ``kid`` in older keys starts a refetch when one is due, and is served
  from the known keys without waiting when another caller's fetch is running or failing.
- **Bounded wait.** A caller that needs a fetch (no keys yet, an unknown ``kid``, or it started
  the fetch) waits for it at most ``fetch_wait_seconds`` from the fetch's start; then it gets
  :class:`IssuerUnavailable` while the fetch carries on.
- **Failure backoff.** A failed fetch (discovery or JWKS, any error) is retried no sooner than
  ``min_backoff_seconds``, doubling per consecutive failure up to ``max_backoff_seconds``;
  a successful fetch resets it. A failure keeps the known keys and is not the unknown-kid
  cooldown. While no keys are known, or a ``kid`` that may be new cannot be looked up, the
  caller gets :class:`IssuerUnavailable` (a :class:`~keyless.errors.SourceUnavailable`
  saying when the issuer is tried next; ``retry_after`` seconds), or the failure's own
  :class:`~keyless.errors.SourceMisconfigured` (an http:// URL, a 404) with that note added.
- **Unknown kid.** Only after a successful fetch: an unknown ``kid`` triggers at most one
  refetch per ``cooldown_seconds``; within the cooldown it is refused at once
  (:class:`~keyless.errors.TokenRejected`, claim ``kid``), so a flood of forged ``kid`` values
  cannot turn the verifier into a JWKS hammer.
- **Duplicate kids.** ``duplicate_kids`` names the ``kid`` values the last JWKS published more
  than once (only the last such key is used), for diagnostics.

Messages name the issuer and URLs, never a token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

from ..clock import Clock, SystemClock
from ..errors import (
    ConfigError,
    KeylessError,
    SourceMisconfigured,
    SourceUnavailable,
    TokenRejected,
)
from ..http import json_object, raise_for_status, safe_url, send
from ..sources.base import default_http_client

__all__ = ["KTY_FOR_ALG", "IssuerUnavailable", "JwksCache", "SigningKey", "discovery_url",
           "parse_http_date"]

#: The JWK ``kty`` each algorithm family needs (by the algorithm's first two letters).
KTY_FOR_ALG = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
#: Doubling stops there: 2**30 times the minimum is past any sensible maximum.
_MAX_DOUBLINGS = 30


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


class IssuerUnavailable(SourceUnavailable):
    """The issuer's keys cannot be fetched now; ``retry_after`` is the seconds until the
    next try (an ingress answers 503 with ``Retry-After``)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def _extra_state(self) -> dict[str, Any]:
        return {"retry_after": self.retry_after}


@dataclasses.dataclass(frozen=True)
class SigningKey:
    """One JWKS signing key: ``kid`` ("" when absent), ``kty``, the ``alg`` the JWK declares
    (None when it declares none) and the pyjwt key."""

    kid: str
    kty: str
    alg: str | None
    jwk: jwt.PyJWK


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


def _signing_keys(body: dict[str, Any]) -> tuple[dict[str, SigningKey], frozenset[str]]:
    """The usable signing keys of a JWKS by ``kid``, and the kids published more than once."""
    keys: dict[str, SigningKey] = {}
    duplicates: set[str] = set()
    for entry in body.get("keys") or []:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" \
                or entry.get("kty") not in KTY_FOR_ALG.values():
            continue  # encryption and symmetric ("oct") keys never verify a signature
        try:
            jwk = jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue  # an unusable key (unknown crv, bad alg) must not hide the others
        kid = str(entry.get("kid") or "")
        if kid and kid in keys:
            duplicates.add(kid)
        alg = entry.get("alg")
        keys[kid] = SigningKey(kid=kid, kty=str(entry["kty"]),
                               alg=alg if isinstance(alg, str) else None, jwk=jwk)
    return keys, frozenset(duplicates)


def _pick(keys: dict[str, SigningKey], kid: str | None) -> SigningKey | None:
    """The key for ``kid``; without a kid, the only key (None when there are several)."""
    if kid:
        return keys.get(kid)
    return next(iter(keys.values())) if len(keys) == 1 else None


class _Flight:
    """One running fetch: ``done`` is set when it landed; ``deadline`` (monotonic) is when
    callers stop waiting for it; ``pid`` the process whose thread runs it (a forked child
    has no such thread and starts its own fetch)."""

    def __init__(self, wait_seconds: float) -> None:
        self.done = threading.Event()
        self.deadline = time.monotonic() + wait_seconds
        self.pid = os.getpid()

    def wait(self) -> None:
        self.done.wait(max(0.0, self.deadline - time.monotonic()))


class JwksCache:
    """An issuer's discovery document and signing keys (the module docstring is the contract).

    ``http`` makes the ``httpx.Client`` (injected in tests); ``clock`` drives max age,
    cooldown and backoff. After the discovery fetch, ``server_date`` is the issuer's HTTP
    ``Date`` (epoch seconds, None if absent) and ``local_time_at_date`` the local clock when
    that answer arrived.
    """

    def __init__(self, issuer: str, *, http: Callable[[], httpx.Client] = default_http_client,
                 clock: Clock | None = None, cooldown_seconds: float = 300.0,
                 max_age_seconds: float = 3600.0, allow_insecure_http: bool = False,
                 component: str = "verify", fetch_wait_seconds: float = 2.0,
                 min_backoff_seconds: float = 1.0, max_backoff_seconds: float = 30.0) -> None:
        if not issuer:
            raise ConfigError("verify: issuer is empty; fix: give the issuer's URL", "issuer")
        if not 0.0 < min_backoff_seconds <= max_backoff_seconds or not fetch_wait_seconds > 0:
            raise ConfigError("verify: fetch_wait_seconds, min_backoff_seconds and "
                              "max_backoff_seconds must be positive, min <= max; fix: e.g. "
                              "2, 1 and 30", "min_backoff_seconds")
        self.issuer = issuer
        self.cooldown_seconds = cooldown_seconds
        self.max_age_seconds = max_age_seconds
        self.allow_insecure_http = allow_insecure_http
        self.component = component
        self.fetch_wait_seconds = fetch_wait_seconds
        self.min_backoff_seconds = min_backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._http = http
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()  # guards the state below; never held during I/O
        self._discovery: dict[str, Any] | None = None
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None  # the last successful JWKS fetch
        self._flight: _Flight | None = None
        self._failures = 0  # consecutive failed fetches
        self._retry_at = 0.0  # no fetch before this (clock time) after a failure
        self._last_error: KeylessError | None = None
        self.duplicate_kids: frozenset[str] = frozenset()
        self.server_date: float | None = None
        self.local_time_at_date: float | None = None

    # -- public -------------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        """The discovery document (fetched once); its ``jwks_uri`` is a string. Read without
        the lock once fetched (published by one assignment, never changed)."""
        document = self._discovery
        if document is None:
            self._await(self._start_if_due(None)[0])
            document = self._discovery
        if document is None:
            with self._lock:
                raise self._unavailable_locked(self._clock.time())
        return document

    def keys(self) -> dict[str, SigningKey]:
        """The current signing keys by ``kid`` ("" for a key without one); fetched if none
        were ever fetched."""
        if self._fetched_at is None:
            self._await(self._start_if_due(None)[0])
        with self._lock:
            if self._fetched_at is None:
                raise self._unavailable_locked(self._clock.time())
            return dict(self._keys)

    def key(self, kid: str | None) -> SigningKey:
        """The key for ``kid`` (without one: the only key), per the module's contract."""
        fetched_at, keys = self._fetched_at, self._keys
        if fetched_at is not None and self._clock.time() - fetched_at < self.max_age_seconds:
            found = _pick(keys, kid)
            if found is not None:
                return found
        flight, own = self._start_if_due(kid)
        if flight is not None and (own or _pick(self._keys, kid) is None):
            flight.wait()
        with self._lock:
            found = _pick(self._keys, kid)
            if found is not None:
                return found
            raise self._miss_locked(kid, self._clock.time())

    # -- fetching -----------------------------------------------------------------------------

    def _start_if_due(self, kid: str | None) -> tuple[_Flight | None, bool]:
        """The running fetch (False), a fetch started now if one is due (True), or None."""
        with self._lock:
            if self._flight is not None and self._flight.pid == os.getpid():
                return self._flight, False
            if not self._due_locked(kid, self._clock.time()):
                return None, False
            flight = self._flight = _Flight(self.fetch_wait_seconds)
        try:
            threading.Thread(target=self._fly, args=(flight,), name="keyless-jwks-fetch",
                             daemon=True).start()
        except RuntimeError as exc:  # no thread to be had: land at once, back off
            self._land(flight, {}, frozenset(), SourceUnavailable(
                f"{self.component}: cannot start a thread to fetch {self.issuer}'s keys "
                f"({exc}); fix: raise this process's thread limit"))
        return flight, True

    def _due_locked(self, kid: str | None, now: float) -> bool:
        if now < self._retry_at:
            return False  # backing off after a failure
        if self._fetched_at is None or now - self._fetched_at >= self.max_age_seconds:
            return True
        return _pick(self._keys, kid) is None and now - self._fetched_at >= self.cooldown_seconds

    @staticmethod
    def _await(flight: _Flight | None) -> None:
        if flight is not None:
            flight.wait()

    def _fly(self, flight: _Flight) -> None:
        """The fetch thread: discovery (once) then the JWKS; always lands, whatever fails."""
        error: KeylessError | None = SourceUnavailable(
            f"{self.component}: fetching {self.issuer}'s keys was interrupted; fix: retry")
        keys: dict[str, SigningKey] = {}
        duplicates: frozenset[str] = frozenset()
        try:
            document = self._discovery or self._fetch_discovery()
            body, _ = self._get_json(str(document["jwks_uri"]), "JWKS (jwks_uri)")
            keys, duplicates = _signing_keys(body)
            error = None
        except KeylessError as exc:
            error = exc
        except Exception as exc:  # a fetch thread must land, never die
            error = SourceUnavailable(
                f"{self.component}: fetching {self.issuer}'s keys failed unexpectedly "
                f"({type(exc).__name__}); fix: check the issuer's discovery and JWKS answers")
        finally:
            self._land(flight, keys, duplicates, error)

    def _land(self, flight: _Flight, keys: dict[str, SigningKey], duplicates: frozenset[str],
              error: KeylessError | None) -> None:
        with self._lock:
            now = self._clock.time()
            if error is None:
                self._keys, self.duplicate_kids = keys, duplicates
                self._fetched_at = now
                self._failures, self._retry_at, self._last_error = 0, 0.0, None
            else:
                self._failures += 1
                doublings = min(self._failures - 1, _MAX_DOUBLINGS)
                delay = min(self.max_backoff_seconds, self.min_backoff_seconds * 2 ** doublings)
                self._retry_at, self._last_error = now + delay, error
            self._flight = None
        flight.done.set()

    def _fetch_discovery(self) -> dict[str, Any]:
        url = discovery_url(self.issuer)
        document, response = self._get_json(url, "OIDC discovery document")
        if not isinstance(document.get("jwks_uri"), str):
            raise SourceMisconfigured(f"{self.component}: {safe_url(url)} has no jwks_uri; "
                                      "fix: check the issuer URL")
        self.server_date = parse_http_date(response.headers.get("date"))
        self.local_time_at_date = self._clock.time()
        self._discovery = document
        return document

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

    # -- refusals -----------------------------------------------------------------------------

    def _miss_locked(self, kid: str | None, now: float) -> KeylessError:
        """Why ``kid`` has no key: refused (keys fetched within the cooldown, or fetched
        without a failure since), or the issuer cannot be asked now."""
        fetched_at = self._fetched_at
        recent = fetched_at is not None and now - fetched_at < self.cooldown_seconds
        settled = fetched_at is not None and self._flight is None and self._failures == 0
        if not (recent or settled):
            return self._unavailable_locked(now)
        known = sorted(k for k in self._keys if k)
        return TokenRejected(
            f"{self.component}: no signing key with kid={kid!r} at {self.issuer}'s JWKS "
            f"(known kids: {known}); fix: use a token from this issuer (keys are "
            f"refetched at most every {self.cooldown_seconds:.0f} s after a miss)",
            claim="kid")

    def _unavailable_locked(self, now: float) -> KeylessError:
        """The error for "the issuer cannot be asked now": a fetch still running, or the last
        failure with when the next try is."""
        if self._flight is not None or self._last_error is None:
            return IssuerUnavailable(
                f"{self.component}: the issuer {self.issuer} is unavailable: its discovery/"
                f"JWKS did not answer within {self.fetch_wait_seconds:g} s and is still being "
                "fetched; fix: retry in a few seconds, and check that the issuer is reachable",
                retry_after=self.fetch_wait_seconds)
        retry = max(0.0, self._retry_at - now)
        error = self._last_error
        if isinstance(error, SourceMisconfigured):
            return SourceMisconfigured(f"{error.message} (next try in {retry:.0f} s)")
        return IssuerUnavailable(
            f"{self.component}: the issuer {self.issuer} is unavailable ({error.message}); "
            f"next try in {retry:.0f} s; fix: retry after that, and check that the issuer is "
            "reachable", retry_after=retry)
