"""Schemathesis over /openapi.json: generated requests to every endpoint, no server errors.

The store holds finished runs only, so every event stream ends after its replay. Run ids are
generated from the schema, which also names a run that exists here (its example).

The app is built at import, over a temporary database: schemathesis's fixture-based loader
(`schemathesis.pytest.from_fixture`) fails under pytest 9.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from monitor.context import MonitorContext
from monitor.main import create_app
from monitor.settings import MonitorSettings
from tests.monitor.conftest import INGEST_TOKEN, ingest
from tests.monitor.sample_runs import sample_run

EXAMPLE_RUN = "20250101-120000-fedavg-run1"  # the run id the OpenAPI schema shows

_directory = tempfile.TemporaryDirectory(prefix="fedq-monitor-fuzz-")
_context = MonitorContext.open(
    MonitorSettings(database=Path(_directory.name) / "monitor.sqlite", ingest_token=INGEST_TOKEN)
)
ingest(_context, *sample_run(EXAMPLE_RUN, strategy="fedavg", rounds=3).messages)
ingest(_context, *sample_run().messages)
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_context))


@pytest.fixture(scope="module", autouse=True)
def _remove_database() -> Iterator[None]:
    yield
    _context.close()
    _directory.cleanup()


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema_without_server_errors(case: schemathesis.Case) -> None:
    case.call_and_validate()
