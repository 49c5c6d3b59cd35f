"""Reliability suite: faults, rotations and load against the real parts, bounded in time.

Whole-system tests use the e2e fixtures (``federation``: the reference IdP registered with
the verifying STS front; ``leak_guard``: nothing secret or JWT-shaped in any output). Each test
records one summary line through ``reliability_summary``; they are printed at the end of the
run ("load held, faults survived, bad inputs tried, failures").
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.conftest import federation, leak_guard

__all__ = ["federation", "leak_guard", "reliability_summary"]

SUMMARIES: list[str] = []


@pytest.fixture
def reliability_summary() -> Callable[..., str]:
    """``reliability_summary(name, load=..., faults=..., bad_inputs=..., failures=...,
    **extra)`` records and prints the run's summary line; returns it."""

    def record(name: str, *, load: str, faults: str, bad_inputs: int, failures: int,
               **extra: object) -> str:
        more = "".join(f", {key.replace('_', ' ')}={value}" for key, value in extra.items())
        line = (f"reliability {name}: load held={load}, faults survived={faults}, "
                f"bad inputs tried={bad_inputs}, failures={failures}{more}")
        SUMMARIES.append(line)
        print(line)
        return line

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SUMMARIES:
        terminalreporter.section("reliability summary")
        for line in SUMMARIES:
            terminalreporter.write_line(line)
