"""The fleet benchmark's simulation (benchmarks/fleet.py) stays sound at a small scale: the
real Refresher and botocore schedules run on the simulated clock, keyless never hands out an
expired credential, shares one subject token per node, and its steady load sits near the
uncoordinated floor. Counts only: nothing here is timed."""

from __future__ import annotations

import pytest

from benchmarks import fleet
from keyless.refresher import RefreshPolicy

SPEC = fleet.FleetSpec(workers=300, nodes=30, hours=4.0)


def test_small_fleet_has_no_expired_reads_and_shares_tokens_per_node() -> None:
    ours, wide, phased, boto, boto900 = fleet.simulate(SPEC)
    assert ours.reads > 0
    assert ours.expired_reads == wide.expired_reads == phased.expired_reads == 0
    assert not ours.notes, ours.notes  # no exchange with an expired subject token
    # one IdP call per node per refresh period, one STS call per worker per refresh period
    assert ours.idp.sum() < ours.sts.sum() / 5
    assert ours.sts.sum() + ours.idp.sum() < boto.sts.sum() + boto.idp.sum()
    assert boto900.sts.sum() > 10 * boto.sts.sum()  # a 900 s session calls STS on every read


def test_uncoordinated_floor_is_an_even_spread_of_the_given_rate() -> None:
    floor = fleet.uncoordinated_floor(SPEC, clients=1_000, period=1_800.0)
    assert floor["even"] == pytest.approx(1_000 / 1_800.0, rel=0.02)
    assert 1.0 < floor["peak60"] / floor["even"] < 1.6


def test_rows_judge_every_keyless_peak_against_the_limit_or_the_floor() -> None:
    rows, _ = fleet.run(SPEC)
    peaks = [row for row in rows if "peak / even" in row.name]
    assert len(peaks) == 6
    for row in peaks:
        assert "floor" in row.note and row.met is not None


def _repeating_idp_calls(result: fleet.FleetResult, period: int) -> tuple[int, int]:
    """(steady IdP calls that repeat one ``period`` (+-1 s) earlier, steady IdP calls)."""
    start = int(result.spec.lifetime * 1.5)  # past every node's first (wide-window) value
    calls = result.idp
    repeated = sum(int(calls[s]) for s in range(start, len(calls))
                   if calls[s] and calls[s - period - 1:s - period + 2].any())
    return repeated, int(calls[start:].sum())


def test_keep_phase_nodes_call_the_idp_on_a_fixed_period() -> None:
    """keep_phase: after its first value each node refreshes its subject token every
    0.5 x lifetime exactly (its phase kept); with per-value jitter the calls wander."""
    spec = fleet.FleetSpec(workers=40, nodes=10, hours=6.0)
    period = int(spec.lifetime * 0.5)
    repeated, total = _repeating_idp_calls(
        fleet.simulate_keyless(spec, RefreshPolicy(keep_phase=True)), period)
    assert total > 50 and repeated == total
    repeated, total = _repeating_idp_calls(fleet.simulate_keyless(spec), period)
    assert total > 50 and repeated < total / 2
