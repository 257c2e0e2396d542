"""Tests of the monitor: telemetry contract, store, REST API, ingest service, dashboard."""
