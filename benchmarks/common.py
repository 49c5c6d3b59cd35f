"""Shared pieces of the benchmarks: one result row, and a timer for tight loops.

A :class:`Row` is one line of the results table: what was measured, keyless's figure, the
alternative's figure (when there is one), their ratio, the target and whether it was met.
Timings are medians over several repeats so that a noisy shared machine moves them less;
ratios come from measurements taken side by side in the same run.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Row", "compare", "fmt", "ns_per_call"]


@dataclass(frozen=True)
class Row:
    """One table row. ``ratio`` is keyless / baseline unless the section says otherwise;
    ``met`` is None when the row records a figure with no target."""

    section: str
    name: str
    keyless: float
    baseline: float | None
    unit: str
    ratio: float | None
    target: str
    met: bool | None
    note: str = ""


def ns_per_call(fn: Callable[[], object], *, calls: int = 200_000, repeats: int = 7) -> float:
    """Median nanoseconds per call of ``fn`` over ``repeats`` runs of ``calls`` calls each
    (after a warm-up run); the garbage collector is off while timing."""
    loops = calls // 10

    def run() -> float:
        start = time.perf_counter_ns()
        for _ in range(loops):  # unrolled x10 so the loop itself weighs less
            fn(); fn(); fn(); fn(); fn(); fn(); fn(); fn(); fn(); fn()  # noqa: E702
        return (time.perf_counter_ns() - start) / (loops * 10)

    run()
    enabled = gc.isenabled()
    gc.disable()
    try:
        samples = [run() for _ in range(repeats)]
    finally:
        if enabled:
            gc.enable()
    return statistics.median(samples)


def compare(fns: dict[str, Callable[[], object]], *, calls: int = 100_000,
            repeats: int = 9) -> dict[str, float]:
    """Median ns per call of each function, measured in alternation (A B A B ...) so that a
    change in machine load moves every figure alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        ns_per_call(fn, calls=calls // 10, repeats=1)
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(ns_per_call(fn, calls=calls, repeats=1))
    return {name: statistics.median(values) for name, values in samples.items()}


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for the table ("-" for None), with ``digits`` significant digits."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"
