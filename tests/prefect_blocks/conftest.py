"""One real Prefect 3.9 server for the whole session (``prefect_test_harness``), with a
temporary ``PREFECT_HOME``, analytics off, and the ``keyless`` loggers shipped to the API like
Prefect's own (so flow and task logs as the API returns them include keyless's audit lines).

The settings must be in the environment before ``prefect`` is first imported (its settings
and logging are configured at import), hence at this module's top. Process-pool children
inherit them.
"""

from __future__ import annotations

import os
import shutil
import tempfile

PREFECT_HOME = tempfile.mkdtemp(prefix="keyless-prefect-home-")
os.environ["PREFECT_HOME"] = PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = "keyless"
os.environ["PREFECT_UI_ENABLED"] = "false"  # the harness never serves it: prefect_ui.py does
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"  # audit outside a flow run

from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.exceptions import ObjectNotFound  # noqa: E402
from prefect.settings import PREFECT_API_URL  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from tests.e2e.conftest import Federation, LeakGuard, federation, leak_guard  # noqa: E402, F401


@dataclass
class PrefectServer:
    """The harness's server: its API URL, and the block type and schema it had registered
    at start (read before any test saved a block, which would register it too)."""

    api_url: str
    block_type: Any
    block_schemas: list[Any]


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[PrefectServer]:
    with prefect_test_harness(server_startup_timeout=180):
        with get_client(sync_client=True) as client:
            try:
                block_type = client.read_block_type_by_slug("keyless-credentials")
            except ObjectNotFound:
                block_type = None
            schemas = client.read_block_schemas() if block_type is not None else []
        yield PrefectServer(
            api_url=str(PREFECT_API_URL.value()), block_type=block_type,
            block_schemas=[s for s in schemas if s.block_type_id == block_type.id])
    shutil.rmtree(PREFECT_HOME, ignore_errors=True)
