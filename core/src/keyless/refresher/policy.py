"""When a refreshing cache refreshes and how it backs off: :class:`RefreshPolicy` (from a
config's ``refresh:`` section) and :func:`due_fraction`, shared by every refreshing cache (the
:class:`~keyless.refresher.Refresher`, the AWS credentials' windows). The formulas are in
:mod:`keyless.refresher`'s docstring."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import RefreshSpec

__all__ = ["RefreshPolicy", "due_fraction"]


@dataclass(frozen=True)
class RefreshPolicy:
    """When to refresh and how to back off. See the module docstring for the formulas."""

    at_fraction: float = 0.5
    jitter_fraction: float = 0.1
    initial_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    expiry_margin_seconds: float = 30.0
    #: Half-width (fraction of the lifetime) of the window the first refresh is drawn from.
    first_refresh_spread: float = 0.25
    #: Later values due at exactly ``at_fraction``; a new phase after a failure.
    keep_phase: bool = False

    def __post_init__(self) -> None:
        checks = (
            ("at_fraction", 0.0 < self.at_fraction < 1.0, "between 0 and 1 (exclusive)"),
            ("jitter_fraction", 0.0 <= self.jitter_fraction <= 0.5, "between 0 and 0.5"),
            ("initial_backoff_seconds", 0.0 < self.initial_backoff_seconds < math.inf,
             "a positive number of seconds"),
            ("max_backoff_seconds", 0.0 < self.max_backoff_seconds < math.inf,
             "a positive number of seconds"),
            ("expiry_margin_seconds", 0.0 <= self.expiry_margin_seconds < math.inf,
             "zero or a positive number of seconds"),
            ("first_refresh_spread", 0.0 <= self.first_refresh_spread <= 0.5,
             "between 0 and 0.5"),
        )
        for field, ok, expected in checks:
            if not ok:
                raise ConfigError(
                    f"refresh: {field}={getattr(self, field)!r} is out of range; "
                    f"set it to {expected}", field=f"refresh.{field}")

    @classmethod
    def from_spec(cls, spec: RefreshSpec) -> RefreshPolicy:
        """The policy for a config's ``refresh:`` section."""
        return cls(at_fraction=spec.at_fraction, jitter_fraction=spec.jitter_fraction,
                   initial_backoff_seconds=spec.initial_backoff_seconds,
                   max_backoff_seconds=spec.max_backoff_seconds,
                   first_refresh_spread=spec.first_refresh_spread,
                   keep_phase=spec.keep_phase)

    def backoff_cap(self, failures: int) -> float:
        """Upper bound of the delay after ``failures`` consecutive failures (``failures >= 1``)."""
        return min(self.max_backoff_seconds,
                   self.initial_backoff_seconds * 2.0 ** min(max(failures - 1, 0), 64))


def due_fraction(policy: RefreshPolicy, rng: random.Random, *, first: bool,
                 valid_fraction: float = 1.0, after_failure: bool = False) -> float:
    """When a value is due for refresh, as a fraction of its lifetime: wide for the first
    value (``at_fraction ± max(first_refresh_spread, jitter_fraction)``, no earlier than half
    of ``at_fraction``: spreads a fleet that started together), ``at_fraction ±
    jitter_fraction`` afterwards; never past ``valid_fraction``. ``jitter_fraction`` 0 means
    no randomness at all. With ``keep_phase``: exactly ``at_fraction`` after the first value,
    and wide again for the value fetched ``after_failure`` (the attempt before it failed).
    Shared by every refreshing cache (the Refresher, the AWS credentials' windows)."""
    at, jitter = policy.at_fraction, policy.jitter_fraction
    if first or (policy.keep_phase and after_failure):  # draw a (new) phase: the wide window
        spread = max(policy.first_refresh_spread, jitter) if jitter > 0.0 else 0.0
        low = max(at - spread, at / 2.0)
        high = max(min(at + spread, valid_fraction), low)
        return rng.uniform(low, high)
    if policy.keep_phase:  # keep the phase: no per-value jitter
        return min(at, valid_fraction)
    return min(max(at + rng.uniform(-jitter, jitter), 0.0), valid_fraction, 1.0)
