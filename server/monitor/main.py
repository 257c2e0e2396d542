"""Builds the monitor's FastAPI app from a MonitorContext; nothing else."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

import fedq
from server.monitor.api import clients, dashboard, events, health, metrics, rounds, runs
from server.monitor.api.responses import UNAUTHORIZED
from server.monitor.context import MonitorContext
from server.monitor.deps import require_reader

DESCRIPTION = (
    "Status of fedq training runs: rounds, clients, bandwidth and strategy figures, as "
    "reported by the ServerApp over gRPC (proto/telemetry.proto). Node ids are decimal text."
)


def create_app(context: MonitorContext) -> FastAPI:
    """The REST API, /metrics and the dashboard over `context`'s store.

    With a read token configured, the API and /metrics ask for it (and the OpenAPI schema says
    so); health and the dashboard's static files never do.
    """
    app = FastAPI(title="fedq monitor", version=fedq.__version__, description=DESCRIPTION)
    app.state.monitor = context
    app.state.metrics_registry = metrics.build_registry(context)
    guarded = context.settings.read_token is not None
    for module in (runs, rounds, clients, events, metrics):
        app.include_router(
            module.router,
            dependencies=[Depends(require_reader)] if guarded else [],
            responses=UNAUTHORIZED if guarded else None,
        )
    app.include_router(health.router)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=dashboard.STATIC_DIR), name="static")
    return app
