"""The one refresh primitive behind every token and credential in keyless.

A :class:`Refresher` owns the cache of one value (a subject token, a set of cloud
credentials) and calls ``fetch`` to renew it. Modelled on botocore's
``RefreshableCredentials``:

- **Refresh-ahead with jitter.** A value fetched at ``issued_at`` with lifetime ``L`` is due
  for refresh at ``issued_at + L * (at_fraction + U(-jitter_fraction, +jitter_fraction))``,
  drawn once per value from the injected ``rng`` (so a fleet spreads out), and never later
  than the end of its validity. The *first* value a refresher fetches (no previous value:
  a new process, a cold start, after unpickling) is due at a fraction drawn uniformly from
  the wider window ``at_fraction +- max(first_refresh_spread, jitter_fraction)``, narrowed to
  ``[at_fraction / 2, (valid_until - issued_at) / L]`` so it is never immediate and never
  past validity: a fleet that started in the same minute spreads over that whole window at
  its first refresh instead of drifting apart by a small jitter over hours. Every later value
  uses ``at_fraction +- jitter_fraction``. ``jitter_fraction: 0`` asks for a deterministic
  schedule: then the first value is due at ``at_fraction`` too. With ``keep_phase`` every later
  value is due at exactly ``at_fraction`` (the refresher keeps the phase its first value drew:
  a fleet's refreshes stay as spread as their first draws instead of random-walking), and the
  first value after a failed attempt is drawn from the wide window again (a fleet that
  recovered from an outage at the same moment spreads out again). A value is *valid* until
  ``expires_at - min(expiry_margin_seconds, 0.1 * L)``. A value that arrives already past its
  refresh point (say a file token minted long ago) is due after the same fraction of what is
  left of its validity, so a stale upstream cannot cause a fetch on every call.
- **Advisory vs mandatory.** While the current value is valid but due, exactly one caller
  refreshes (non-blocking lock try) and every other caller gets the current value at once.
  With no valid value (cold start, expired), callers block on the lock and re-check after
  acquiring it: 64 threads on a cold cache make one upstream call.
- **Frozen snapshot.** The value, its expiry and its due time live in one immutable object
  swapped in by one assignment: a caller never sees a mix of two refreshes, and the hot path
  (valid, not due) takes no lock: one attribute read, one ``clock.time()``, one compare.
- **Stale-while-error, backoff with full jitter.** A failed refresh while the value is valid
  serves the value, calls ``on_error(exc, True)`` and waits
  ``U(0, min(max_backoff, initial * 2**failures))`` before the next upstream call, where
  ``failures`` counts the consecutive failures before this one (the first waits up to
  ``initial``) and the wait never runs past the end of validity (one last try there).
  With nothing valid left, callers get the last error again until that time, then one new
  attempt. Only :class:`~keyless.errors.KeylessError` is raised: anything
  else from ``fetch`` becomes ``ExchangeFailed("<name>: refresh failed: <TypeName>",
  retryable=True)`` chained ``from`` the original, whose message is never copied (it might
  carry a secret).
- **Fork-safe.** After ``os.fork()`` every refresher in the child gets a fresh lock (a thread
  of the parent may have held it mid-fetch) and, if it drew from its own default ``rng``, a
  reseeded one; the cached value is kept: it is still valid in the child.
- **Picklable.** Pickling keeps ``fetch``, ``name``, ``policy``, the callbacks, and an injected
  clock or rng; those must be picklable themselves (module-level functions, callable objects,
  not lambdas or closures; ``keyless.clock.FakeClock`` holds a lock and is not). The lock, the
  cached value and the backoff state are dropped and rebuilt in the new process: the first
  ``get()`` there fetches.

``fetch`` runs with the refresh lock held: it must not call back into its own refresher
(another refresher is fine: an exchange's fetch calls its source's ``get()``).

Callbacks are for audit: ``on_refresh(value, first)`` after each new value, ``on_error(error,
still_serving_stale)`` after each failed upstream attempt. They run after the refresh lock is
released, so they may call back into the refresher; an exception they raise is logged on the
``keyless.refresher`` logger (type name only) and otherwise ignored.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import random
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from keyless.clock import Clock, SystemClock
from keyless.errors import ExchangeFailed, KeylessError

from .policy import RefreshPolicy, due_fraction

__all__ = ["due_fraction", "Fetched", "RefreshPolicy", "Refresher"]


T = TypeVar("T")

logger = logging.getLogger("keyless.refresher")

_DEFAULT_POLICY = RefreshPolicy()


@dataclass(frozen=True)
class Fetched(Generic[T]):
    """What ``fetch`` returns: the value and its lifetime in epoch seconds."""

    value: T
    expires_at: float
    issued_at: float | None = None  # default: the refresher clock's now when fetch returned


@dataclass(frozen=True, slots=True)
class _Snapshot(Generic[T]):
    value: T
    refresh_at: float  # <= valid_until; the hot path serves the value until then
    valid_until: float
    expires_at: float
    issued_at: float


@dataclass(frozen=True, slots=True)
class _Outcome(Generic[T]):
    """What a locked refresh decided: a value to hand out or an error to raise, and the
    callbacks to run once the lock is released."""

    value: T | None
    error: KeylessError | None = None
    events: tuple[Callable[[], None], ...] = ()


@dataclass(frozen=True, slots=True)
class _Backoff:
    failures: int
    retry_at: float
    error: KeylessError


_registry: weakref.WeakSet[Refresher[Any]] = weakref.WeakSet()
_registry_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()  # another parent thread may have held it at fork time
    for refresher in list(_registry):
        refresher._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _register(refresher: Refresher[Any]) -> None:
    with _registry_lock:
        _registry.add(refresher)


def _iso(epoch: float) -> str:
    try:
        return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return repr(epoch)


def _again(error: KeylessError) -> KeylessError:
    """A fresh copy of ``error`` to raise again (re-raising one object from many threads
    would grow its traceback on every raise)."""
    try:
        fresh = copy.copy(error)
        fresh.__dict__.update(error.__dict__)
    except Exception:
        return error
    return fresh


class Refresher(Generic[T]):
    """Keeps one value fresh; see the module docstring for the contract."""

    def __init__(self, fetch: Callable[[], Fetched[T]], *, name: str,
                 policy: RefreshPolicy = _DEFAULT_POLICY,
                 clock: Clock | None = None, rng: random.Random | None = None,
                 on_refresh: Callable[[T, bool], None] | None = None,
                 on_error: Callable[[BaseException, bool], None] | None = None) -> None:
        self._setup(fetch, name, policy, clock, rng, on_refresh, on_error)

    def _setup(self, fetch: Callable[[], Fetched[T]], name: str, policy: RefreshPolicy,
               clock: Clock | None, rng: random.Random | None,
               on_refresh: Callable[[T, bool], None] | None,
               on_error: Callable[[BaseException, bool], None] | None) -> None:
        self._fetch = fetch
        self.name = name
        self.policy = policy
        self._clock_injected = clock is not None
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._rng_injected = rng is not None
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 (jitter, not crypto)
        self._on_refresh = on_refresh
        self._on_error = on_error
        self._lock = threading.Lock()
        self._now = self._clock.time
        self._snapshot: _Snapshot[T] | None = None
        self._backoff: _Backoff | None = None
        self._serial = 0
        _register(self)

    # ------------------------------------------------------------------------- public API

    def get(self) -> T:
        """A valid value: the cached one, or a fresh one when a refresh is due.

        Raises :class:`~keyless.errors.KeylessError` only when no valid value is left and the
        upstream fails (or is still in its backoff after a failure).
        """
        snap = self._snapshot
        if snap is not None and self._now() < snap.refresh_at:
            return snap.value
        return self._get_slow()

    def peek(self) -> T | None:
        """The cached value without refreshing, even if expired (check ``expires_at``)."""
        snap = self._snapshot
        return None if snap is None else snap.value

    def invalidate(self) -> None:
        """Forget the cached value; the next ``get()`` fetches (backoff still applies).

        Waits for a refresh in flight, so that its value is forgotten too."""
        with self._lock:
            self._snapshot = None

    @property
    def expires_at(self) -> float | None:
        """Expiry (epoch seconds) of the cached value, or None."""
        snap = self._snapshot
        return None if snap is None else snap.expires_at

    @property
    def valid_until(self) -> float | None:
        """Until when the cached value is served: its expiry less the safety margin."""
        snap = self._snapshot
        return None if snap is None else snap.valid_until

    def next_refresh_at(self) -> float | None:
        """When the next upstream call is due: the refresh point of the cached value, or the
        end of the backoff after a failure; None before the first fetch attempt (or after
        ``invalidate()`` with no failure pending: the next ``get()`` fetches)."""
        backoff, snap = self._backoff, self._snapshot
        if backoff is None:
            return None if snap is None else snap.refresh_at
        return backoff.retry_at if snap is None else max(backoff.retry_at, snap.refresh_at)

    def refresh_now(self) -> T:
        """Fetch a new value now, ignoring the schedule and the backoff.

        Single flight: if another thread published a new value while this one waited for the
        lock, that value is returned without a second upstream call. On failure the error is
        raised, and a still-valid cached value stays cached (``get()`` keeps serving it).
        Used by background delivery loops, which pace themselves with ``next_refresh_at()``.
        """
        serial = self._serial
        with self._lock:
            snap = self._snapshot
            if snap is not None and self._serial != serial and self._now() < snap.valid_until:
                return snap.value
            outcome = self._refresh_locked(force=True)
        return self._deliver(outcome)

    # ------------------------------------------------------------------------ slow path

    def _get_slow(self) -> T:
        snap = self._snapshot
        if snap is not None and self._now() < snap.valid_until:
            lock = self._lock  # a local: a fork hook may swap self._lock meanwhile
            if not lock.acquire(blocking=False):
                return snap.value  # advisory: someone else is refreshing; serve the current one
            try:
                outcome = self._refresh_locked(force=False)
            finally:
                lock.release()
        else:
            with self._lock:  # mandatory: nothing valid, wait for whoever is refreshing
                outcome = self._refresh_locked(force=False)
        return self._deliver(outcome)

    def _deliver(self, outcome: _Outcome[T]) -> T:
        """With the lock released: run the callbacks, then hand out the value or raise."""
        for event in outcome.events:
            try:
                event()
            except Exception as exc:
                logger.warning("%s: a refresh callback raised %s; ignored", self.name,
                               type(exc).__name__)
        if outcome.error is not None:
            raise outcome.error
        return outcome.value  # type: ignore[return-value]  # set whenever error is None

    def _refresh_locked(self, *, force: bool) -> _Outcome[T]:
        """With the lock held: re-check, fetch if still needed, publish or record the failure."""
        snap = self._snapshot
        now = self._now()
        if not force:
            if snap is not None and now < snap.refresh_at:
                return _Outcome(snap.value)  # another thread refreshed while we waited
            backoff = self._backoff
            if backoff is not None and now < backoff.retry_at:
                if snap is not None and now < snap.valid_until:
                    return _Outcome(snap.value)
                error = _again(backoff.error)  # nothing valid and still backing off
                error.__cause__ = backoff.error
                return _Outcome(None, error=error)
        try:
            fetched = self._fetch()
            if not isinstance(fetched, Fetched):
                raise ExchangeFailed(
                    f"{self.name}: fetch returned {type(fetched).__name__}, not Fetched; "
                    f"fix the fetch function", retryable=False)
            new = self._validate(fetched)
        except Exception as exc:
            return self._failed(exc, force=force)
        first = self._serial == 0
        self._serial += 1
        self._backoff = None
        self._snapshot = new
        on_refresh = self._on_refresh
        if on_refresh is None:
            return _Outcome(new.value)
        return _Outcome(new.value, events=(lambda: on_refresh(new.value, first),))

    def _validate(self, fetched: Fetched[T]) -> _Snapshot[T]:
        now = self._now()
        issued = now if fetched.issued_at is None else float(fetched.issued_at)
        expires = float(fetched.expires_at)
        lifetime = expires - issued
        if not (math.isfinite(expires) and math.isfinite(issued) and lifetime > 0):
            raise ExchangeFailed(
                f"{self.name}: the fetched value has no usable lifetime (issued at "
                f"{_iso(issued)}, expires at {_iso(expires)}); the upstream must return a "
                f"finite expiry after the issue time", retryable=True)
        policy = self.policy
        valid_until = expires - min(policy.expiry_margin_seconds, 0.1 * lifetime)
        if now >= valid_until:
            raise ExchangeFailed(
                f"{self.name}: the fetched value expires at {_iso(expires)}, which is not "
                f"after now ({_iso(now)}) plus the safety margin; check this machine's clock "
                f"and the upstream's token lifetime", retryable=True)
        fraction = self._due_fraction(1.0 - (expires - valid_until) / lifetime)
        refresh_at = issued + lifetime * fraction
        if refresh_at <= now:  # arrived past its refresh point: same fraction of what is left
            refresh_at = now + (valid_until - now) * fraction
        return _Snapshot(value=fetched.value, refresh_at=min(refresh_at, valid_until),
                         valid_until=valid_until, expires_at=expires, issued_at=issued)

    def _due_fraction(self, valid_fraction: float) -> float:
        """The fraction of the lifetime after which the value being published is due."""
        return due_fraction(self.policy, self._rng, first=self._serial == 0,
                            valid_fraction=valid_fraction,
                            after_failure=self._backoff is not None)

    def _failed(self, exc: Exception, *, force: bool) -> _Outcome[T]:
        """Record a failed upstream call and schedule the next one; serve the stale value
        (unless forced) or raise."""
        if isinstance(exc, KeylessError):
            error: KeylessError = exc
        else:  # never copy the message of an arbitrary exception: it may hold a secret
            error = ExchangeFailed(f"{self.name}: refresh failed: {type(exc).__name__}",
                                   retryable=True)
            error.__cause__ = exc
        now = self._now()  # the fetch took time: is the current value still valid?
        snap = self._snapshot
        stale_ok = snap is not None and now < snap.valid_until
        failures = 1 if self._backoff is None else self._backoff.failures + 1
        retry_at = now + self._rng.uniform(0.0, self.policy.backoff_cap(failures))
        if snap is not None and stale_ok:
            retry_at = min(retry_at, snap.valid_until)  # one last try as the value runs out
            self._snapshot = dataclasses.replace(snap, refresh_at=max(snap.refresh_at, retry_at))
        self._backoff = _Backoff(failures=failures, retry_at=retry_at, error=error)
        on_error = self._on_error
        events = () if on_error is None else (lambda: on_error(error, stale_ok),)
        if snap is not None and stale_ok and not force:  # nobody else hears of this failure
            logger.warning("%s; serving the current value, next attempt in %.1f s (failure %d)",
                           error.message, retry_at - now, failures)
            return _Outcome(snap.value, events=events)
        # raised to the caller, who reports it: a warning here would say it twice
        logger.info("%s; no valid value left, next attempt in %.1f s (failure %d)",
                    error.message, retry_at - now, failures)
        return _Outcome(None, error=error, events=events)

    # ---------------------------------------------------------------- fork and pickle

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        if not self._rng_injected:
            self._rng = random.Random()  # noqa: S311 (children must not share the jitter)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "fetch": self._fetch, "name": self.name, "policy": self.policy,
            "clock": self._clock if self._clock_injected else None,
            "rng": self._rng if self._rng_injected else None,
            "on_refresh": self._on_refresh, "on_error": self._on_error,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._setup(state["fetch"], state["name"], state["policy"], state["clock"],
                    state["rng"], state["on_refresh"], state["on_error"])

    def __repr__(self) -> str:
        snap = self._snapshot
        state = "empty" if snap is None else f"expires {_iso(snap.expires_at)}"
        return f"Refresher(name={self.name!r}, {state})"
