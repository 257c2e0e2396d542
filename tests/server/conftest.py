"""The telemetry sender is tested against a real monitor process: the monitor tests' fixtures."""

from tests.monitor.conftest import monitor_service, shared_monitor

__all__ = ["monitor_service", "shared_monitor"]
