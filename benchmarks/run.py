"""Run every benchmark, print the table, write benchmarks/results/{results.md,results.png}.

    python3 dev.py bench                  # builds .envs/bench, then runs this
    python -m benchmarks.run [--quick]    # from the repository root, in such an environment

``--quick`` runs a smaller fleet (1,000 workers on 100 nodes) and fewer training blocks, for a
smoke test. Nothing here asserts on time; each row states its target and whether it was met.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import (
    coldstart,
    fleet,
    hotpath,
    raynodes,
    report,
    singleflight,
    training,
    verification,
)
from benchmarks.common import Row
from benchmarks.stack import Federation

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("hotpath", "singleflight", "training", "coldstart", "verification", "fleet",
            "raynodes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller fleet, fewer training blocks")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--only", choices=SECTIONS, action="append",
                        help="run only this section (repeatable); prints the table, writes "
                             "no files")
    args = parser.parse_args(argv)
    only = set(args.only or SECTIONS)
    logging.getLogger("keyless").setLevel(logging.ERROR)  # no refresh warnings in the table
    started = time.perf_counter()
    rows: list[Row] = []

    def section(title: str) -> None:
        print(f"[bench] {title} ({time.perf_counter() - started:.0f} s)", flush=True)

    spec = fleet.FleetSpec(workers=1_000, nodes=100) if args.quick else fleet.FleetSpec()
    calls: dict[str, dict[int, int]] = {}
    fleet_results: list[fleet.FleetResult] = []
    if only - {"fleet"}:
        with Federation() as fed:
            if "hotpath" in only:
                section("1. hot path")
                rows += hotpath.run(fed)
            if "singleflight" in only:
                section("2. single flight")
                flight_rows, calls = singleflight.run(fed)
                rows += flight_rows
            if "training" in only:
                section("4. training overhead")
                rows += training.run(fed, blocks=10 if args.quick else 40)
            if "coldstart" in only:
                section("5. cold start")
                rows += coldstart.run(fed)
            if "verification" in only:
                section("6. verification")
                rows += verification.run(fed)
    if "raynodes" in only:
        section("7. ray nodes (a head and 2 worker nodes, then a third)")
        rows += raynodes.run(seconds=15.0 if args.quick else 30.0)
    if "fleet" in only:
        section(f"3. fleet scale ({spec.workers:,} workers, simulated {spec.hours:.0f} h)")
        fleet_rows, fleet_results = fleet.run(spec)
        rows += fleet_rows
    rows.sort(key=lambda r: r.section)
    table = report.markdown(rows, time.perf_counter() - started)
    if args.only:
        print()
        print(table)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table)
    image = report.plot(args.out / "results.png", calls, fleet_results)
    print()
    print(table)
    print(f"[bench] wrote {args.out / 'results.md'} and {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
