"""The AWS credentials' refresh windows follow the real session length (targets/aws.py)."""

from __future__ import annotations

import datetime
import itertools
import random
from typing import Any

import pytest

from keyless.refresher import RefreshPolicy
from keyless.targets.aws import _credentials_class


class Sts:
    """Stands in for the STS call only (botocore's refresh machinery is the thing tested)."""

    def __init__(self, lifetime: float, now: list[float]) -> None:
        self.lifetime = lifetime
        self.now = now
        self.calls = 0
        self.fail = False

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("sts down")
        expiry = datetime.datetime.fromtimestamp(self.now[0] + self.lifetime, datetime.UTC)
        return {"access_key": f"AKIA{self.calls:016d}", "secret_key": "s", "token": "t",
                "expiry_time": expiry.isoformat()}


def make(lifetime: float, policy: RefreshPolicy | None = None) -> tuple[Any, Sts, list[float]]:
    now = [1_700_000_000.0]
    sts = Sts(lifetime, now)
    credentials = _credentials_class()(
        refresh_using=sts, method="test", policy=policy or RefreshPolicy(), rng=random.Random(7),
        time_fetcher=lambda: datetime.datetime.fromtimestamp(now[0], datetime.UTC))
    return credentials, sts, now


@pytest.mark.parametrize("lifetime", [900.0, 3600.0, 20.0])
def test_one_sts_call_per_half_lifetime_not_per_access(lifetime: float) -> None:
    credentials, sts, now = make(lifetime)
    steps = 200
    for _ in range(steps):  # two lifetimes, accessed 100 times per lifetime
        credentials.get_frozen_credentials()
        now[0] += lifetime / 100
    # at_fraction 0.5 ± 0.1 jitter: about one call per half lifetime, never one per access
    assert 3 <= sts.calls <= 6, sts.calls


def test_failed_advisory_refresh_backs_off_and_serves_current_credentials() -> None:
    # no first-refresh spread: the advisory window then starts at 0.5 ± 0.1 of the lifetime
    credentials, sts, now = make(900.0, RefreshPolicy(first_refresh_spread=0.0))
    first = credentials.get_frozen_credentials().access_key
    now[0] += 900 * 0.65  # inside the advisory window, outside the mandatory one
    sts.fail = True
    calls = sts.calls
    for _ in range(100):
        assert credentials.get_frozen_credentials().access_key == first
    assert sts.calls - calls == 1  # one try, then backoff (no call per access)
    sts.fail = False
    now[0] += 61  # past the longest first backoff
    assert credentials.get_frozen_credentials().access_key != first


def test_keep_phase_refreshes_at_exactly_at_fraction_and_respreads_after_a_failure() -> None:
    credentials, sts, now = make(1000.0, RefreshPolicy(keep_phase=True))
    credentials.get_frozen_credentials()  # the first set: its advisory start is drawn
    calls: list[float] = []
    for _ in range(6000):  # 6 lifetimes, a read every second
        before = sts.calls
        credentials.get_frozen_credentials()
        if sts.calls != before:
            calls.append(now[0])
        now[0] += 1.0
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    # exactly 0.5 x 1000 s (botocore refreshes once strictly less than the window remains:
    # the read a second later)
    assert len(gaps) >= 8 and set(gaps) == {501.0}, gaps

    # a failed advisory refresh: the set fetched after it draws a new phase (wide window)
    sts.fail = True
    while sts.calls == len(calls) + 1:
        credentials.get_frozen_credentials()
        now[0] += 1.0
    sts.fail = False
    recovered = sts.calls
    while sts.calls == recovered:
        credentials.get_frozen_credentials()
        now[0] += 1.0
    start = now[0] - 1.0
    while sts.calls == recovered + 1:
        credentials.get_frozen_credentials()
        now[0] += 1.0
    gap = now[0] - 1.0 - start  # a kept phase would be 501 s again
    assert 250.0 <= gap <= 751.0 and gap != 501.0
