"""The refresher's contract: schedule, single flight, snapshots, stale-while-error, backoff,
error hygiene, fork and pickle. Time is a FakeClock; races use real threads."""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

import keyless.refresher as refresher_module
from keyless.clock import FakeClock, SystemClock
from keyless.config import RefreshSpec
from keyless.errors import ConfigError, ExchangeFailed, SourceUnavailable
from keyless.refresher import Fetched, Refresher, RefreshPolicy

START = 1_700_000_000.0
WAIT = 30.0  # generous bound for "did not deadlock" guards; never a timing assertion


@dataclass(frozen=True)
class Value:
    """A frozen credential-like value whose fields all carry its sequence number."""

    seq: int
    key: str
    secret: str
    issued_at: float
    expires_at: float

    def whole(self) -> bool:
        return self.key == f"key-{self.seq}" and self.secret == f"secret-{self.seq}"


class Fetch:
    """An upstream that numbers its values, counts calls, and can fail or block on demand."""

    def __init__(self, clock: FakeClock, lifetime: float = 600.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.call_times: list[float] = []
        self.fail: Exception | None = None
        self.gate: threading.Event | None = None  # when set: wait on it inside fetch
        self.entered = threading.Event()
        self.fetching_thread: int | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Fetched[Value]:
        with self._lock:
            self.calls += 1
            seq = self.calls
            now = self.clock.time()
            self.call_times.append(now)
        self.fetching_thread = threading.get_ident()
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT), "test gate never opened"
        if self.fail is not None:
            raise self.fail
        expires = now + self.lifetime
        return Fetched(Value(seq, f"key-{seq}", f"secret-{seq}", now, expires), expires_at=expires)


class TopRng(random.Random):
    """Always draws the top of the interval: jitter +j, backoff delay = its cap."""

    def uniform(self, a: float, b: float) -> float:
        return b


class BottomRng(random.Random):
    """Always draws the bottom of the interval."""

    def uniform(self, a: float, b: float) -> float:
        return a


def make(fetch: Fetch, *, rng: random.Random | None = None, **kwargs: Any) -> Refresher[Value]:
    return Refresher(fetch, name="test-refresher", clock=fetch.clock,
                     rng=rng if rng is not None else random.Random(7), **kwargs)


def wait_until_blocked_in_refresher(threads: list[threading.Thread], skip: int | None) -> None:
    """Wait (bounded) until every thread but ``skip`` sits inside refresher.py, where the only
    thing that blocks is the refresh lock."""
    ids = {t.ident for t in threads} - {skip}
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        frames = sys._current_frames()
        if all(i in frames and frames[i].f_code.co_filename == refresher_module.__file__
               for i in ids):
            return
        time.sleep(0.001)
    pytest.fail("threads never reached the refresh lock")


def run_threads(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive(), "a thread is stuck"


# ------------------------------------------------------------------------------ policy

def test_policy_from_spec_and_validation() -> None:
    spec = RefreshSpec(at_fraction=0.7, jitter_fraction=0.05, max_backoff_seconds=10,
                       initial_backoff_seconds=0.5)
    policy = RefreshPolicy.from_spec(spec)
    assert (policy.at_fraction, policy.jitter_fraction) == (0.7, 0.05)
    assert (policy.initial_backoff_seconds, policy.max_backoff_seconds) == (0.5, 10)
    assert policy.expiry_margin_seconds == 30.0
    assert RefreshPolicy.from_spec(RefreshSpec()) == RefreshPolicy()
    with pytest.raises(ConfigError) as info:
        RefreshPolicy(at_fraction=1.5)
    assert info.value.field == "refresh.at_fraction"
    for bad in ({"jitter_fraction": 0.9}, {"max_backoff_seconds": 0},
                {"initial_backoff_seconds": -1}, {"expiry_margin_seconds": -1}):
        with pytest.raises(ConfigError):
            RefreshPolicy(**bad)


def test_backoff_caps() -> None:
    policy = RefreshPolicy(initial_backoff_seconds=1, max_backoff_seconds=60)
    assert [policy.backoff_cap(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert policy.backoff_cap(10_000) == 60


# ------------------------------------------------------------------------------ schedule

def test_cold_get_fetches_once_then_serves_the_cache() -> None:
    fetch = Fetch(FakeClock(START))
    r = make(fetch)
    assert r.peek() is None and r.expires_at is None and r.next_refresh_at() is None
    first = r.get()
    assert first.seq == 1 and fetch.calls == 1
    for _ in range(100):
        assert r.get() is first
    assert fetch.calls == 1
    assert r.peek() is first and r.expires_at == START + 600
    assert r.valid_until == START + 600 - 30  # min(30 s, 10% of 600 s)


def test_margin_is_ten_percent_of_short_lifetimes() -> None:
    fetch = Fetch(FakeClock(START), lifetime=100)
    r = make(fetch)
    r.get()
    assert r.valid_until == START + 90


def test_refresh_happens_at_the_due_time_and_not_before() -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock)
    r = make(fetch)
    first = r.get()
    due = r.next_refresh_at()
    assert due is not None
    clock.advance(due - clock.time() - 0.001)
    assert r.get() is first and fetch.calls == 1
    clock.advance(0.001)
    assert r.get().seq == 2 and fetch.calls == 2


def test_due_times_land_in_the_jitter_band_across_many_draws() -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock, lifetime=1000)
    r = make(fetch, rng=random.Random(1234))
    r.get()  # the first value is due in the wider first-refresh window (tested below)
    fractions = []
    for _ in range(2000):
        r.refresh_now()
        due = r.next_refresh_at()
        assert due is not None
        fractions.append((due - clock.time()) / 1000)
    assert all(0.4 <= f <= 0.6 for f in fractions)
    assert min(fractions) < 0.41 and max(fractions) > 0.59  # the whole band is used
    assert len(set(fractions)) > 1900


def test_first_refresh_is_drawn_from_the_wide_window() -> None:
    """A fleet that starts together: each refresher's first value is due anywhere in
    at_fraction +- first_refresh_spread; every later one in at_fraction +- jitter_fraction."""
    rng = random.Random(4242)
    firsts, laters = [], []
    for _ in range(500):
        clock = FakeClock(START)
        fetch = Fetch(clock, lifetime=1000)
        r = make(fetch, rng=rng)
        r.get()
        first_due = r.next_refresh_at()
        assert first_due is not None
        firsts.append((first_due - START) / 1000)
        clock.advance(first_due - START)
        assert r.get().seq == 2
        later_due = r.next_refresh_at()
        assert later_due is not None
        laters.append((later_due - clock.time()) / 1000)
    assert all(0.25 <= f <= 0.75 for f in firsts)
    assert min(firsts) < 0.27 and max(firsts) > 0.73  # the whole wide window is used
    assert sum(f < 0.4 or f > 0.6 for f in firsts) > 100  # well outside the jitter band
    assert all(0.4 <= f <= 0.6 for f in laters)
    assert min(laters) < 0.41 and max(laters) > 0.59


def test_first_refresh_window_is_clamped_and_configurable() -> None:
    # at 0.8 + 0.25 would run past validity (+970: 1000 s lifetime less the 30 s margin)
    top = make(Fetch(FakeClock(START), lifetime=1000), rng=TopRng(),
               policy=RefreshPolicy(at_fraction=0.8))
    top.get()
    assert top.next_refresh_at() == START + 970
    bottom = make(Fetch(FakeClock(START), lifetime=1000), rng=BottomRng(),
                  policy=RefreshPolicy(at_fraction=0.2))
    bottom.get()
    assert bottom.next_refresh_at() == START + 100  # never below at_fraction / 2
    narrow = make(Fetch(FakeClock(START), lifetime=1000), rng=BottomRng(),
                  policy=RefreshPolicy(first_refresh_spread=0.0, jitter_fraction=0.05))
    narrow.get()
    assert narrow.next_refresh_at() == START + 450  # spread 0: the jitter band, as later
    exact = make(Fetch(FakeClock(START), lifetime=1000), rng=TopRng(),
                 policy=RefreshPolicy(jitter_fraction=0.0))
    exact.get()
    assert exact.next_refresh_at() == START + 500  # jitter 0: deterministic, first one too
    spec = RefreshSpec(first_refresh_spread=0.1)
    assert RefreshPolicy.from_spec(spec).first_refresh_spread == 0.1
    with pytest.raises(ConfigError) as info:
        RefreshPolicy(first_refresh_spread=0.6)
    assert info.value.field == "refresh.first_refresh_spread"


def test_keep_phase_refreshes_every_later_value_at_exactly_at_fraction() -> None:
    """keep_phase: the first value draws the phase (wide window), every later value is due at
    exactly at_fraction (the refresher keeps its phase), and the value fetched after a failed
    attempt draws a new phase from the wide window."""
    clock = FakeClock(START)
    fetch = Fetch(clock, lifetime=1000)
    r = make(fetch, rng=random.Random(99), policy=RefreshPolicy(keep_phase=True))
    r.get()
    first_due = r.next_refresh_at()
    assert first_due is not None and 0.25 <= (first_due - START) / 1000 <= 0.75
    for _ in range(20):
        clock.advance(r.next_refresh_at() - clock.time())  # type: ignore[operator]
        issued = clock.time()
        r.get()
        assert r.next_refresh_at() == issued + 500.0
    assert RefreshPolicy.from_spec(RefreshSpec(keep_phase=True)).keep_phase

    phases = set()
    for _ in range(50):  # fail once at the refresh point, then recover after the backoff
        clock.advance(r.next_refresh_at() - clock.time())  # type: ignore[operator]
        fetch.fail = ConnectionError("idp down")
        r.get()  # the stale value is served
        fetch.fail = None
        clock.advance(r.next_refresh_at() - clock.time())  # type: ignore[operator]
        issued = clock.time()
        r.get()
        fraction = (r.next_refresh_at() - issued) / 1000  # type: ignore[operator]
        assert 0.25 <= fraction <= 0.75
        phases.add(round(fraction, 6))
        clock.advance(r.next_refresh_at() - clock.time())  # type: ignore[operator]
        issued = clock.time()
        r.get()  # a success after a success: exact again
        assert r.next_refresh_at() == issued + 500.0
    assert len(phases) > 40 and min(phases) < 0.4 and max(phases) > 0.6


def test_due_times_differ_between_instances() -> None:
    clock = FakeClock(START)
    dues = set()
    for rng in (None, None, random.Random(1), random.Random(2)):
        r = Refresher(Fetch(clock), name="x", clock=clock, rng=rng)
        r.get()
        dues.add(r.next_refresh_at())
    assert len(dues) == 4


def test_a_value_arriving_past_its_refresh_point_is_not_refetched_on_every_call() -> None:
    clock = FakeClock(START)
    calls = []

    def old_file_token() -> Fetched[str]:
        calls.append(clock.time())  # minted 50 min ago, expires in 10 min
        return Fetched("tok", expires_at=START + 600, issued_at=START - 3000)

    r = Refresher(old_file_token, name="file", clock=clock, rng=TopRng())
    r.get()
    due = r.next_refresh_at()
    # valid until START + 570; due after 0.6 of what is left, not immediately
    assert due == pytest.approx(START + 0.6 * 570)
    for _ in range(10):
        r.get()
    assert len(calls) == 1


# ------------------------------------------------------------------------ single flight

def test_advisory_refresh_serves_the_current_value_while_one_thread_refreshes() -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock)
    r = make(fetch)
    first = r.get()
    clock.advance(r.next_refresh_at() - clock.time())  # type: ignore[operator]
    fetch.gate, fetch.entered = threading.Event(), threading.Event()
    results: list[Value] = []
    refresher_thread = threading.Thread(target=lambda: results.append(r.get()))
    refresher_thread.start()
    assert fetch.entered.wait(WAIT)
    others: list[Value] = []
    reader = threading.Thread(target=lambda: others.extend(r.get() for _ in range(50)))
    reader.start()
    reader.join(WAIT)  # would hang if readers blocked on the lock in the advisory window
    assert not reader.is_alive()
    assert others == [first] * 50 and fetch.calls == 2
    fetch.gate.set()
    refresher_thread.join(WAIT)
    assert results[0].seq == 2 and r.get().seq == 2


def test_with_nothing_valid_callers_wait_for_the_refresh_in_flight() -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock)
    r = make(fetch)
    r.get()
    clock.advance(600)  # expired
    fetch.gate, fetch.entered = threading.Event(), threading.Event()
    got: list[Value] = []
    threads = [threading.Thread(target=lambda: got.append(r.get())) for _ in range(3)]
    for t in threads:
        t.start()
    assert fetch.entered.wait(WAIT)
    wait_until_blocked_in_refresher(threads, skip=fetch.fetching_thread)
    assert got == []  # nobody was handed the expired value
    fetch.gate.set()
    for t in threads:
        t.join(WAIT)
    assert fetch.calls == 2 and [v.seq for v in got] == [2, 2, 2]


def test_cold_cache_with_64_threads_makes_exactly_one_fetch() -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock)
    fetch.gate = threading.Event()
    r = make(fetch)
    barrier = threading.Barrier(64)
    got: list[Value] = []

    def worker() -> None:
        barrier.wait()
        got.append(r.get())

    threads = [threading.Thread(target=worker) for _ in range(64)]
    for t in threads:
        t.start()
    assert fetch.entered.wait(WAIT)
    wait_until_blocked_in_refresher(threads, skip=fetch.fetching_thread)
    fetch.gate.set()
    for t in threads:
        t.join(WAIT)
    assert fetch.calls == 1
    assert len(got) == 64 and {v.seq for v in got} == {1}


def test_refresh_now_is_single_flight() -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock)
    r = make(fetch)
    r.get()
    fetch.gate, fetch.entered = threading.Event(), threading.Event()
    got: list[Value] = []
    threads = [threading.Thread(target=lambda: got.append(r.refresh_now())) for _ in range(4)]
    for t in threads:
        t.start()
    assert fetch.entered.wait(WAIT)
    wait_until_blocked_in_refresher(threads, skip=fetch.fetching_thread)
    fetch.gate.set()
    for t in threads:
        t.join(WAIT)
    assert fetch.calls == 2 and {v.seq for v in got} == {2}


def test_no_race_conditions_under_load() -> None:
    """botocore's test_has_no_race_conditions, with a fake clock moved by its own thread."""
    fake = FakeClock(START)
    seen_at = threading.local()

    class RecordingClock:
        """The refresher's clock: remembers, per thread, the last time the refresher read."""

        def time(self) -> float:
            now = fake.time()
            seen_at.now = now
            return now

        def sleep(self, seconds: float) -> None:
            fake.advance(seconds)

    lifetime = 10.0
    fetch = Fetch(fake, lifetime=lifetime)
    expiries: dict[int, float] = {}
    inner = fetch.__call__

    in_flight = threading.Lock()  # the clock jumps past whole lifetimes only between fetches

    def numbered() -> Fetched[Value]:
        with in_flight:
            time.sleep(0)  # an upstream call does I/O: let the other threads run meanwhile
            fetched = inner()
        expiries[fetched.value.seq] = fetched.expires_at
        return fetched

    policy = RefreshPolicy()
    r: Refresher[Value] = Refresher(numbered, name="race", clock=RecordingClock(),
                                    rng=random.Random(3), policy=policy)
    done = threading.Event()
    problems: list[str] = []

    end = START + 12 * lifetime

    def advance_clock() -> None:
        steps = 0
        while not done.is_set() and fake.time() < end:
            steps += 1  # mostly less than the 1 s margin; now and then past the whole lifetime
            if steps % 25 == 0:
                with in_flight:
                    fake.advance(1.5 * lifetime)
            else:
                fake.advance(0.5)
            done.wait(0.0005)

    def worker() -> None:
        last_seq = 0
        gets = 0
        while gets < 2000 or fake.time() < end:
            gets += 1
            if gets % 100 == 0:
                time.sleep(0)  # yield the GIL now and then, so the clock thread keeps moving
            try:
                value = r.get()
            except Exception as exc:
                problems.append(f"get() raised {exc!r}")
                continue
            now = seen_at.now
            margin = min(policy.expiry_margin_seconds, 0.1 * (value.expires_at - value.issued_at))
            if not now < value.expires_at - margin:
                problems.append(f"value {value.seq} handed out invalid at {now}")
            if not value.whole() or expiries.get(value.seq) != value.expires_at:
                problems.append(f"value {value.seq} is not a whole snapshot")
            if value.seq < last_seq:
                problems.append(f"went back from value {last_seq} to {value.seq}")
            last_seq = value.seq

    clock_thread = threading.Thread(target=advance_clock)
    clock_thread.start()
    try:
        run_threads([threading.Thread(target=worker) for _ in range(8)])
    finally:
        done.set()
        clock_thread.join(WAIT)
    assert problems == []
    elapsed = fake.time() - START
    shortest = lifetime * (policy.at_fraction - policy.jitter_fraction)
    assert fetch.calls <= elapsed / shortest + 2, (fetch.calls, elapsed)
    # one fetch per due value: each upstream call came once the previous value was due
    gaps = [b - a for a, b in itertools.pairwise(fetch.call_times)]
    assert min(gaps) >= shortest - 1e-6, gaps
    assert fetch.calls >= 12  # the clock moved through 12 lifetimes: refreshes happened


# ---------------------------------------------------------------- stale-while-error

def test_idp_outage_while_valid_never_reaches_callers_and_backs_off() -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock, lifetime=600)  # valid until +570, due at +360 (TopRng: +0.1 jitter)
    errors: list[tuple[BaseException, bool]] = []
    r = make(fetch, rng=TopRng(), on_error=lambda e, stale: errors.append((e, stale)))
    first = r.get()
    fetch.fail = SourceUnavailable("idp: connection refused; is the IdP up?")
    clock.advance(360)
    end = START + 560
    done = threading.Event()
    failures: list[BaseException] = []

    def advance_clock() -> None:
        while clock.time() < end:
            clock.advance(2)
            done.wait(0.0005)

    def worker() -> None:
        gets = 0
        while clock.time() < end:
            gets += 1
            if gets % 100 == 0:
                time.sleep(0)  # yield the GIL now and then, so the clock thread keeps moving
            try:
                if r.get() is not first:
                    failures.append(AssertionError("not the current value"))
            except BaseException as exc:
                failures.append(exc)

    run_threads([threading.Thread(target=advance_clock)]
                + [threading.Thread(target=worker) for _ in range(6)])
    assert failures == []
    attempts = fetch.call_times[1:]
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    caps = [r.policy.backoff_cap(n) for n in range(1, len(attempts))]
    assert all(gap >= cap for gap, cap in zip(gaps, caps, strict=True)), (gaps, caps)
    # at most 360, 362, 364, 368, 376, 392, 424, 484, 544 (the clock moves in 2 s steps);
    # how many of those happen depends on thread scheduling, so only the bound is checked
    # here (test_outage_never_calls_upstream_before_the_scheduled_retry checks the schedule)
    assert 1 <= len(attempts) <= 10
    assert len(errors) == len(attempts) and all(stale for _, stale in errors)
    assert all(isinstance(e, SourceUnavailable) for e, _ in errors)


def test_outage_never_calls_upstream_before_the_scheduled_retry() -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock, lifetime=3600)
    r = make(fetch, rng=random.Random(99))
    r.get()
    fetch.fail = ConnectionError("down")
    clock.advance(r.next_refresh_at() - clock.time())  # type: ignore[operator]
    scheduled: float | None = None
    calls = fetch.calls
    while clock.time() < START + 3000:
        if scheduled is not None and clock.time() < scheduled:
            r.get()
            assert fetch.calls == calls, "called upstream during the backoff"
        else:
            assert r.get().seq == 1
            if fetch.calls != calls:
                calls = fetch.calls
                scheduled = r.next_refresh_at()
                assert scheduled is not None and scheduled > clock.time() - 1e-9
        clock.advance(0.25)
    assert calls > 5


def test_recovery_after_backoff() -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock, lifetime=600)
    refreshed: list[tuple[int, bool]] = []
    r = make(fetch, rng=TopRng(), on_refresh=lambda v, first: refreshed.append((v.seq, first)))
    r.get()
    clock.advance(360)
    fetch.fail = ConnectionError("down")
    for _ in range(3):
        assert r.get().seq == 1
        clock.advance(r.next_refresh_at() - clock.time())  # type: ignore[operator]
    fetch.fail = None
    value = r.get()
    assert value.seq == fetch.calls and refreshed == [(1, True), (value.seq, False)]
    assert r.next_refresh_at() == pytest.approx(clock.time() + 360)
    # the backoff was reset: the next failure waits the initial delay again
    clock.advance(360)
    fetch.fail = ConnectionError("down")
    r.get()
    assert r.next_refresh_at() == pytest.approx(clock.time() + 1)


def test_backoff_delays_grow_and_are_capped_with_nothing_valid() -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock)
    fetch.fail = ConnectionError("down")
    r = make(fetch, rng=TopRng())
    delays = []
    for _ in range(9):
        with pytest.raises(ExchangeFailed):
            r.get()
        retry = r.next_refresh_at()
        assert retry is not None
        delays.append(retry - clock.time())
        clock.advance(retry - clock.time())
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert fetch.calls == 9


def test_backoff_delays_are_full_jitter_below_the_cap() -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock)
    fetch.fail = ConnectionError("down")
    r = make(fetch, rng=random.Random(5))
    ratios = []
    for n in range(1, 40):
        with pytest.raises(ExchangeFailed):
            r.get()
        delay = r.next_refresh_at() - clock.time()  # type: ignore[operator]
        cap = r.policy.backoff_cap(n)
        assert 0 <= delay <= cap
        ratios.append(delay / cap)
        clock.advance(delay)
    assert min(ratios) < 0.25 and max(ratios) > 0.75


def test_nothing_valid_raises_the_last_error_again_without_calling_upstream() -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock)
    fetch.fail = ConnectionError("down")
    r = make(fetch, rng=TopRng(), policy=RefreshPolicy(initial_backoff_seconds=10))
    with pytest.raises(ExchangeFailed) as first:
        r.get()
    for _ in range(5):
        clock.advance(1)
        with pytest.raises(ExchangeFailed) as again:
            r.get()
        assert str(again.value) == str(first.value) and again.value.retryable
        assert again.value.__cause__ is first.value  # the original, chained
    assert fetch.calls == 1
    clock.advance(5)  # backoff of 10 s elapsed: one new attempt
    with pytest.raises(ExchangeFailed):
        r.get()
    assert fetch.calls == 2
    fetch.fail = None
    clock.advance(20)
    assert r.get().seq == 3


def test_last_try_when_the_stale_value_runs_out() -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock, lifetime=100)  # valid until +90, due at +60 (TopRng)
    stale_flags: list[bool] = []
    r = make(fetch, rng=TopRng(), on_error=lambda e, stale: stale_flags.append(stale),
             policy=RefreshPolicy(initial_backoff_seconds=20, first_refresh_spread=0.0))
    r.get()
    fetch.fail = ConnectionError("down")
    clock.advance(60)
    assert r.get().seq == 1  # failure 1 at +60, retry at +80
    clock.advance(20)
    assert r.get().seq == 1  # failure 2 at +80, retry min(+120, +90)
    assert r.next_refresh_at() == START + 90
    clock.advance(9.9)
    assert r.get().seq == 1 and fetch.calls == 3
    clock.advance(0.1)
    with pytest.raises(ExchangeFailed):
        r.get()  # nothing valid: the last try is made, and fails
    assert fetch.calls == 4 and stale_flags == [True, True, False]
    clock.advance(1)
    with pytest.raises(ExchangeFailed):
        r.get()
    assert fetch.calls == 4


# --------------------------------------------------------------------- error hygiene

def test_foreign_errors_are_wrapped_without_their_message(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock)
    fetch.fail = ValueError("eyJhbGciOi.SECRET-IN-MESSAGE")
    r = make(fetch)
    with caplog.at_level(logging.DEBUG, logger="keyless.refresher"):
        with pytest.raises(ExchangeFailed) as info:
            r.get()
    assert str(info.value) == "test-refresher: refresh failed: ValueError"
    assert info.value.retryable and info.value.__cause__ is fetch.fail
    assert "SECRET" not in caplog.text and "test-refresher" in caplog.text
    restored = pickle.loads(pickle.dumps(info.value))
    assert str(restored) == str(info.value)


def test_keyless_errors_pass_through() -> None:
    fetch = Fetch(FakeClock(START))
    fetch.fail = SourceUnavailable("source file: /x is missing; mount the token")
    with pytest.raises(SourceUnavailable) as info:
        make(fetch).get()
    assert info.value is fetch.fail


def test_base_exceptions_are_not_swallowed() -> None:
    fetch = Fetch(FakeClock(START))
    fetch.fail = KeyboardInterrupt()  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        make(fetch).get()


@pytest.mark.parametrize(("expires_in", "issued_ago"), [(-1, None), (0, None), (10, 1000)])
def test_an_expired_fetched_value_is_rejected_and_not_cached(
        expires_in: float, issued_ago: float | None) -> None:
    clock = FakeClock(START)

    def fetch() -> Fetched[str]:
        issued = None if issued_ago is None else START - issued_ago
        return Fetched("tok", expires_at=START + expires_in, issued_at=issued)

    r = Refresher(fetch, name="gcp-sts", clock=clock)
    with pytest.raises(ExchangeFailed) as info:
        r.get()
    message = str(info.value)
    assert message.startswith("gcp-sts: ") and "2023-11-14T22:13" in message
    assert r.peek() is None and r.expires_at is None


def test_fetch_must_return_fetched() -> None:
    r: Refresher[str] = Refresher(lambda: "tok", name="bad",  # type: ignore[arg-type,return-value]
                                  clock=FakeClock())
    with pytest.raises(ExchangeFailed, match=r"^bad: fetch returned str, not Fetched"):
        r.get()


def test_callback_errors_do_not_break_get(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock)

    def bad_refresh(value: Value, first: bool) -> None:
        raise RuntimeError(f"boom {value.secret}")

    def bad_error(error: BaseException, stale: bool) -> None:
        raise RuntimeError("boom")

    r = make(fetch, rng=TopRng(), on_refresh=bad_refresh, on_error=bad_error,
             policy=RefreshPolicy(first_refresh_spread=0.0))  # first due at +360
    with caplog.at_level(logging.WARNING, logger="keyless.refresher"):
        assert r.get().seq == 1
        clock.advance(360)
        fetch.fail = ConnectionError("down")
        assert r.get().seq == 1  # stale, with a raising on_error
    texts = [rec.getMessage() for rec in caplog.records if rec.name == "keyless.refresher"]
    assert sum("callback raised RuntimeError" in t for t in texts) == 2
    assert "secret-1" not in caplog.text and "key-1" not in caplog.text


def test_callbacks_may_call_back_into_the_refresher() -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock)
    peeked: list[Any] = []
    holder: list[Refresher[Value]] = []
    r = make(fetch, on_refresh=lambda v, first: peeked.append(holder[0].get()))
    holder.append(r)
    r.get()
    assert peeked[0].seq == 1


def test_invalidate_forgets_the_value() -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock)
    refreshed: list[bool] = []
    r = make(fetch, on_refresh=lambda v, first: refreshed.append(first))
    r.get()
    r.invalidate()
    assert r.peek() is None and r.next_refresh_at() is None
    assert r.get().seq == 2 and refreshed == [True, False]


def test_refresh_now_raises_but_keeps_the_valid_value() -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock)
    stale_flags: list[bool] = []
    r = make(fetch, on_error=lambda e, stale: stale_flags.append(stale))
    r.get()
    fetch.fail = ConnectionError("down")
    with pytest.raises(ExchangeFailed):
        r.refresh_now()
    assert stale_flags == [True] and r.get().seq == 1 and fetch.calls == 2


def test_repr_shows_no_value() -> None:
    r = make(Fetch(FakeClock(START)))
    r.get()
    assert "secret" not in repr(r) and "test-refresher" in repr(r)


# --------------------------------------------------------------------- pickle and fork

class PicklableClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class PicklableFetch:
    def __init__(self, clock: PicklableClock | SystemClock) -> None:
        self.clock = clock
        self.calls = 0

    def __call__(self) -> Fetched[str]:
        self.calls += 1
        return Fetched(f"token-{self.calls}", expires_at=self.clock.time() + 600)


def test_pickle_drops_the_cache_and_the_lock() -> None:
    clock = PicklableClock(START)
    fetch = PicklableFetch(clock)
    r = Refresher(fetch, name="pickled", clock=clock, rng=random.Random(1),
                  policy=RefreshPolicy(at_fraction=0.3))
    assert r.get() == "token-1"
    blob = pickle.dumps(r)
    assert b"token-1" not in blob
    copy = pickle.loads(blob)
    assert copy.peek() is None and copy.name == "pickled" and copy.policy.at_fraction == 0.3
    assert copy.get() == "token-2"  # fetched again: the cache did not cross
    assert copy._fetch is not fetch and fetch.calls == 1
    assert r.get() == "token-1"


def test_pickle_with_default_clock_and_rng() -> None:
    r = Refresher(PicklableFetch(SystemClock()), name="default")
    r.get()
    copy = pickle.loads(pickle.dumps(r))
    assert copy.get() == "token-2"


def _wait_child(pid: int) -> int:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child deadlocked")


def _in_child(write_fd: int, work: Any) -> None:
    try:
        os.write(write_fd, str(work()).encode())
        code = 0
    except BaseException as exc:
        os.write(write_fd, type(exc).__name__.encode())
        code = 1
    os._exit(code)


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_does_not_inherit_a_held_lock() -> None:
    clock = FakeClock(START)
    parent = os.getpid()
    fetch = Fetch(clock)
    r = make(fetch)

    gate = threading.Event()

    def gated() -> Fetched[Value]:
        fetch.gate = gate if os.getpid() == parent else None
        return fetch()

    r._fetch = gated
    holder = threading.Thread(target=r.get)  # cold cache: holds the lock mid-fetch
    holder.start()
    try:
        assert fetch.entered.wait(WAIT)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            _in_child(write_fd, lambda: r.get().seq)
        os.close(write_fd)
        code = _wait_child(pid)
        out = _read_all(read_fd)
    finally:
        gate.set()
        holder.join(WAIT)
    assert (code, out) == (0, "2")  # the child fetched its own value
    assert r.get().seq == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_keeps_the_valid_value_and_draws_its_own_jitter() -> None:
    clock = FakeClock(START)
    fetch = Fetch(clock)
    r: Refresher[Value] = Refresher(fetch, name="fork", clock=clock)  # default rng
    r.get()

    def child_work() -> str:
        kept = r.get().seq
        calls = fetch.calls
        r.refresh_now()
        return f"{kept} {calls} {r.next_refresh_at()!r}"

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        _in_child(write_fd, child_work)
    os.close(write_fd)
    code = _wait_child(pid)
    kept, calls, child_due = _read_all(read_fd).split()
    assert (code, kept, calls) == (0, "1", "1")
    r.refresh_now()
    assert float(child_due) != r.next_refresh_at()  # the child's rng was reseeded
