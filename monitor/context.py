"""What the monitor's parts share in one process: settings, store, event hub, ingest counters."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from monitor.events import EventHub
from monitor.settings import MonitorSettings
from monitor.store import Store


class IngestStats:
    """Telemetry calls counted by message kind and outcome (accepted, invalid, ...)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def count(self, kind: str, outcome: str) -> None:
        """Count one call of `kind` ("round_report", ...) that ended with `outcome`."""
        with self._lock:
            self._counts[(kind, outcome)] += 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        """The counts so far, by (kind, outcome)."""
        with self._lock:
            return dict(self._counts)


@dataclass
class MonitorContext:
    """The objects one monitor process is built from; the API and the ingest share them."""

    settings: MonitorSettings
    store: Store
    hub: EventHub = field(default_factory=EventHub)
    ingest_stats: IngestStats = field(default_factory=IngestStats)

    @classmethod
    def open(cls, settings: MonitorSettings) -> MonitorContext:
        """Open the store named by `settings` (creating it) and build a fresh context."""
        return cls(settings=settings, store=Store(settings.database, settings.stale_after))

    def close(self) -> None:
        """End the live streams and close the store."""
        self.hub.close()
        self.store.close()
