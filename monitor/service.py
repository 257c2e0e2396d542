"""The monitor process: uvicorn (REST, dashboard) and the gRPC ingest in one process.

SIGTERM or SIGINT stops both: the live event streams end, uvicorn finishes its requests, the
gRPC server lets calls in flight complete, and the database is closed.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from types import FrameType

import uvicorn

from monitor.context import MonitorContext
from monitor.ingest import build_grpc_server
from monitor.main import create_app
from monitor.settings import MonitorSettings

# Seconds given to open HTTP requests and gRPC calls to finish on shutdown.
GRACE_SECONDS = 3.0

log = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    """uvicorn whose signals are handled by the service, which stops gRPC as well."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own handler re-raises the signal after shutdown, which would kill the
        # process before the gRPC server and the database are closed.
        yield


def serve(settings: MonitorSettings) -> None:
    """Run the monitor until SIGTERM or SIGINT; returns after a clean shutdown.

    Raises OSError when a port cannot be bound.
    """
    context = MonitorContext.open(settings)
    try:
        grpc_server, grpc_port = build_grpc_server(context)
        http = _Uvicorn(_uvicorn_config(settings, context))
        _install_signal_handlers(http, context)
        grpc_server.start()
        if settings.ingest_open:
            log.warning("dev mode: telemetry is accepted without a token")
        log.info(
            "fedq monitor: dashboard and API on http://%s:%d/, telemetry on %s:%d, database %s",
            settings.host,
            settings.port,
            settings.grpc_host,
            grpc_port,
            settings.database,
        )
        try:
            http.run()
        except SystemExit:
            # uvicorn logs why it could not start (a port in use) and exits this way.
            raise OSError(f"cannot serve HTTP on {settings.host}:{settings.port}") from None
        finally:
            context.hub.close()
            grpc_server.stop(GRACE_SECONDS).wait()
    finally:
        context.close()
    log.info("fedq monitor stopped")


def _uvicorn_config(settings: MonitorSettings, context: MonitorContext) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(context),
        host=settings.host,
        port=settings.port,
        log_config=None,  # the process's logging configuration applies
        access_log=False,
        timeout_graceful_shutdown=int(GRACE_SECONDS),
        lifespan="off",
    )


def _install_signal_handlers(http: uvicorn.Server, context: MonitorContext) -> None:
    def stop(signum: int, _frame: FrameType | None) -> None:
        if http.should_exit:
            http.force_exit = True  # a second signal: do not wait for open requests
        log.info("received %s, stopping", signal.Signals(signum).name)
        http.should_exit = True
        # Open event streams would otherwise hold uvicorn until its grace period ends.
        context.hub.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
