"""Tests of the ServerApp's own modules: the telemetry builders and sender."""
