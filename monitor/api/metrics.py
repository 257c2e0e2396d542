"""GET /metrics: Prometheus exposition of the runs (rounds, bytes, accuracy) and the ingest."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from monitor.context import MonitorContext
from monitor.store import RUN_STATUSES

router = APIRouter(tags=["metrics"])

# Runs exported per scrape: the newest ones; older history stays in the REST API.
EXPORTED_RUNS = 100

_RUN_LABELS = ["run_id", "strategy"]


@dataclass(frozen=True)
class _Series:
    """One per-run figure: its metric name and help, and the RunRow field it reads."""

    name: str
    documentation: str
    field: str
    counter: bool = False


_PER_RUN = (
    _Series("fedq_run_rounds", "Highest round reported (rounds).", "rounds_done"),
    _Series("fedq_run_accuracy", "Test accuracy of the latest round (0..1).", "last_accuracy"),
    _Series("fedq_run_loss", "Test loss of the latest round.", "last_loss"),
    _Series("fedq_run_bytes_up", "Bytes sent by clients to the server.", "bytes_up", True),
    _Series("fedq_run_bytes_down", "Bytes sent by the server to clients.", "bytes_down", True),
    _Series("fedq_run_fp32_bytes_up", "Dense fp32 equivalent of bytes up.", "fp32_bytes_up", True),
    _Series(
        "fedq_run_fp32_bytes_down", "Dense fp32 equivalent of bytes down.", "fp32_bytes_down", True
    ),
    _Series("fedq_run_rejected", "Client replies the strategy refused.", "rejected", True),
    _Series("fedq_run_failures", "Clients that gave no usable reply.", "failures", True),
)


class MonitorCollector(Collector):
    """Reads the store at scrape time, so the figures are never stale or double-counted."""

    def __init__(self, context: MonitorContext) -> None:
        self._ctx = context

    def collect(self) -> Iterator[Metric]:
        """One family per figure; per-run series are labelled with run id and strategy."""
        runs = self._ctx.store.list_runs(limit=EXPORTED_RUNS)
        yield self._runs_by_status()
        for series in _PER_RUN:
            family_type = CounterMetricFamily if series.counter else GaugeMetricFamily
            family = family_type(series.name, series.documentation, labels=_RUN_LABELS)
            for run in runs:
                figure = getattr(run, series.field)
                if figure is not None:
                    family.add_metric([run.run_id, run.strategy], float(figure))
            yield family
        yield self._ingest_calls()
        streams = GaugeMetricFamily(
            "fedq_monitor_event_streams",
            "Live event streams open.",
            value=self._ctx.hub.subscribers,
        )
        yield streams

    def _runs_by_status(self) -> Metric:
        family = GaugeMetricFamily("fedq_monitor_runs", "Runs by status.", labels=["status"])
        counts = self._ctx.store.count_runs_by_status()
        for status in RUN_STATUSES:
            family.add_metric([status], counts.get(status, 0))
        return family

    def _ingest_calls(self) -> Metric:
        family = CounterMetricFamily(
            "fedq_monitor_ingest_calls",
            "Telemetry calls by message kind and outcome.",
            labels=["kind", "outcome"],
        )
        for (kind, outcome), count in sorted(self._ctx.ingest_stats.snapshot().items()):
            family.add_metric([kind, outcome], count)
        return family


def build_registry(context: MonitorContext) -> CollectorRegistry:
    """A registry of its own per app, so several apps in one process never share series."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(context))
    return registry


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
def metrics(request: Request) -> Response:
    """Prometheus text exposition: runs by status, per-run rounds, bytes and accuracy."""
    payload = generate_latest(request.app.state.metrics_registry)
    return Response(content=payload, media_type=CONTENT_TYPE_LATEST)
