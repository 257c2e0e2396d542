"""The ServerApp's side of the monitor: start, per-round and finish reports, never blocking.

`reports` builds the messages of proto/telemetry.proto from what the ServerApp has; `sender`
delivers them over gRPC from a background thread. The monitor itself is a service of its own
(the top-level `monitor` package) that nothing here imports.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fedq.runconfig import RunConfig
from server.telemetry import reports
from server.telemetry.sender import TelemetrySender

TOKEN_ENV = "FEDQ_MONITOR_INGEST_TOKEN"
# At the end of a run, how long the ServerApp keeps trying to deliver what is still queued
# (RunFinished last) while the monitor is away, seconds; retries come every 2 s at most, so
# a monitor back within this time still gets the run's final state. A reachable monitor
# takes well under a second.
FINAL_DELIVERY_SECONDS = 60.0

log = logging.getLogger(__name__)


class Telemetry:
    """Reports of one run to the monitor at `monitor` (host:port); a no-op when unset."""

    def __init__(self, sender: TelemetrySender | None, run_id: str) -> None:
        self.sender = sender
        self.run_id = run_id

    @classmethod
    def open(cls, config: RunConfig, run_id: str) -> Telemetry:
        """Connect to `config.monitor` with the token from $FEDQ_MONITOR_INGEST_TOKEN."""
        if not config.monitor:
            return cls(None, run_id)
        return cls(TelemetrySender(config.monitor, os.environ.get(TOKEN_ENV, "")), run_id)

    def start(self, config: RunConfig, num_parameters: int, name: str = "") -> None:
        """Announce the run with its configuration and its name for people (`name`)."""
        if self.sender is not None:
            self.sender.send(
                reports.run_started(
                    self.run_id,
                    strategy=config.strategy,
                    model=config.model,
                    num_parameters=num_parameters,
                    clients_expected=config.min_clients,
                    config=config.to_mapping(),
                    name=name,
                )
            )

    def round(self, record: dict[str, Any]) -> None:
        """Send one rounds.jsonl record."""
        if self.sender is not None:
            self.sender.send(reports.round_report(self.run_id, record))

    def finish(self, *, failed: bool, reason: str = "") -> None:
        """Send the end of the run and deliver what is queued (at most FINAL_DELIVERY_SECONDS)."""
        if self.sender is None:
            return
        self.sender.send(reports.run_finished(self.run_id, failed=failed, reason=reason))
        if not self.sender.flush(timeout=1.0):
            log.warning(
                "telemetry: the monitor at %s has not taken the run's last reports within 1 s; "
                "trying for up to %.0f s more to deliver the %d still queued",
                self.sender.address,
                FINAL_DELIVERY_SECONDS,
                self.sender.stats.queued,
            )
        stats = self.sender.close(timeout=FINAL_DELIVERY_SECONDS)
        log.info("telemetry: %s", stats)
