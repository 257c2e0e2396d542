"""Builds the monitor's FastAPI app from a MonitorContext; nothing else."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from monitor.api import clients, dashboard, events, health, metrics, rounds, runs
from monitor.api.responses import UNAUTHORIZED
from monitor.context import MonitorContext
from monitor.deps import require_reader

DESCRIPTION = (
    "Status of fedq training runs: rounds, clients, bandwidth and strategy figures, as "
    "reported by the ServerApp over gRPC (proto/telemetry.proto). Node ids are decimal text."
)


def _version() -> str:
    # The installed distribution's version; a source tree that was never installed has none.
    try:
        return version("fedq")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(context: MonitorContext) -> FastAPI:
    """The REST API, /metrics and the dashboard over `context`'s store.

    With a read token configured, the API and /metrics ask for it (and the OpenAPI schema says
    so); health and the dashboard's static files never do.
    """
    app = FastAPI(title="fedq monitor", version=_version(), description=DESCRIPTION)
    app.state.monitor = context
    app.state.metrics_registry = metrics.build_registry(context)
    app.state.clients_json = clients.ClientsJson()
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
