"""The fedq monitor: telemetry ingest over gRPC, a SQLite history, a REST API and a dashboard."""
