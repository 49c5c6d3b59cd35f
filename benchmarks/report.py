"""The results table (markdown, also printed) and the plot (PNG) of one benchmark run."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from .common import Row, fmt
from .fleet import FleetResult
from .singleflight import KS

__all__ = ["markdown", "plot"]


def _met(row: Row) -> str:
    return "-" if row.met is None else ("met" if row.met else "NOT met")


def markdown(rows: Sequence[Row], seconds: float) -> str:
    """The table: one line per measurement, its target and whether it was met."""
    lines = [f"# keyless benchmarks ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", "",
             f"Python {platform.python_version()} on {platform.machine()}, "
             f"{platform.system()}; run took {seconds:.0f} s. Ratios are keyless / the "
             "alternative, measured side by side in this run.", "",
             "| section | measurement | keyless | alternative | unit | ratio | target | "
             "result | notes |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.section} | {row.name} | {fmt(row.keyless)} | "
                     f"{fmt(row.baseline)} | {row.unit} | {fmt(row.ratio)} | {row.target} | "
                     f"{_met(row)} | {row.note} |")
    met = sum(1 for r in rows if r.met)
    judged = sum(1 for r in rows if r.met is not None)
    lines += ["", f"{met} of {judged} targets met."]
    return "\n".join(lines) + "\n"


def plot(path: Path, calls: dict[str, dict[int, int]], fleet: Sequence[FleetResult]) -> Path:
    """Two panels: single-flight upstream calls per K; fleet STS load over the day."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, per_k in calls.items():
        left.plot(list(KS), [per_k[k] for k in KS], marker="o", label=name)
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("threads on a cold cache (K)")
    left.set_ylabel("upstream calls")
    left.set_title("Single flight")
    left.legend(fontsize=7)
    for result in fleet:
        window = 300
        rate = np.convolve(result.sts, np.ones(window), mode="valid") / window
        hours = np.arange(len(rate)) / 3600.0
        right.plot(hours, rate, linewidth=0.8, label=result.name)
    right.set_yscale("log")
    right.set_xlabel("simulated hours")
    right.set_ylabel("STS calls/s (5 min average)")
    right.set_title("10,000 workers, 1,000 nodes, 1 h credentials")
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
