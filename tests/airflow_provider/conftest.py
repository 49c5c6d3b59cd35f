"""Airflow 3.3 on SQLite for the provider's tests: one temporary AIRFLOW_HOME per session,
`airflow db migrate` once, the examples/airflow folder as the DAGs folder.

AIRFLOW_HOME must be set before anything imports Airflow (it reads its config on import), so
it is set when this conftest is imported, before the test modules are.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Federation, federation, leak_guard  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "examples" / "airflow"
_HOME = Path(tempfile.mkdtemp(prefix="keyless-airflow-home-"))
atexit.register(shutil.rmtree, _HOME, True)

AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "false",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME / 'airflow.db'}",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
}
os.environ.update(AIRFLOW_ENV)


def airflow_cli(*args: str, env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the `airflow` CLI of this environment."""
    airflow = Path(sys.executable).with_name("airflow")
    return subprocess.run([str(airflow), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def airflow_home() -> Iterator[Path]:
    """The session's AIRFLOW_HOME with a migrated SQLite database."""
    result = airflow_cli("db", "migrate")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    yield _HOME


def flat_extra(config: dict[str, Any]) -> dict[str, Any]:
    """A nested keyless config as the connection form saves it: flat source fields plus
    ``source_type`` and JSON parts."""
    source = dict(config["source"])
    extra: dict[str, Any] = {"source_type": source.pop("type"), **source}
    extra.update({k: v for k, v in config.items() if k != "source"})
    return extra
