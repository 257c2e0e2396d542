"""The gRPC Telemetry service: checks the token, validates each report, stores it, wakes streams.

Each outcome has its status code (proto/telemetry.proto lists them): INVALID_ARGUMENT for a
report that breaks a limit (final: the sender drops it), UNAVAILABLE when the database fails
(the sender keeps the report and retries), INTERNAL for a fault of the monitor itself. Every
refusal and error is logged here with the run id and the reason.
"""

from __future__ import annotations

import hmac
import logging
import sqlite3
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc

from monitor.context import MonitorContext
from monitor.validation import (
    ReportError,
    check_round_report,
    check_run_alive,
    check_run_finished,
    check_run_started,
)
from proto import telemetry_pb2 as pb
from proto import telemetry_pb2_grpc as pb_grpc
from proto.telemetry_limits import MAX_REPORT_BYTES

AUTH_METADATA_KEY = "authorization"
GRPC_WORKERS = 8

log = logging.getLogger(__name__)

Msg = TypeVar("Msg", pb.RunStarted, pb.RoundReport, pb.RunFinished, pb.RunAlive)


class TelemetryIngest(pb_grpc.TelemetryServicer):
    """StartRun, ReportRound and FinishRun: validate, write to the store, publish the change."""

    def __init__(self, context: MonitorContext) -> None:
        self._ctx = context

    def StartRun(self, request: pb.RunStarted, context: grpc.ServicerContext) -> pb.Ack:
        """Record a run's start and configuration."""
        return self._ingest("run_started", request, context, check_run_started, self._start)

    def ReportRound(self, request: pb.RoundReport, context: grpc.ServicerContext) -> pb.Ack:
        """Record one round."""
        return self._ingest("round_report", request, context, check_round_report, self._round)

    def FinishRun(self, request: pb.RunFinished, context: grpc.ServicerContext) -> pb.Ack:
        """Record a run's end."""
        return self._ingest("run_finished", request, context, check_run_finished, self._finish)

    def Heartbeat(self, request: pb.RunAlive, context: grpc.ServicerContext) -> pb.Ack:
        """Note that a run's ServerApp is alive (keeps the run from being shown stale)."""
        return self._ingest("run_alive", request, context, check_run_alive, self._alive)

    def _alive(self, msg: pb.RunAlive) -> None:
        self._ctx.store.note_alive(msg)

    def _start(self, msg: pb.RunStarted) -> None:
        self._ctx.store.start_run(msg)

    def _round(self, msg: pb.RoundReport) -> None:
        self._ctx.store.record_round(msg)

    def _finish(self, msg: pb.RunFinished) -> None:
        self._ctx.store.finish_run(msg)

    def _ingest(
        self,
        kind: str,
        msg: Msg,
        context: grpc.ServicerContext,
        check: Callable[[Msg], None],
        write: Callable[[Msg], None],
    ) -> pb.Ack:
        stats = self._ctx.ingest_stats
        try:
            check(msg)
        except ReportError as exc:
            stats.count(kind, "invalid")
            log.warning("refused %s of run %r: %s", kind, msg.run_id[:128], exc)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            write(msg)
        except sqlite3.Error as exc:
            # UNAVAILABLE tells the sender to keep the report and try again later.
            stats.count(kind, "error")
            log.error("could not store %s of run %s: %s", kind, msg.run_id, exc)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the monitor's database failed: {exc}")
        except Exception as exc:
            # A fault of ours; gRPC would answer UNKNOWN without a word. Say it, log it.
            stats.count(kind, "error")
            log.exception("failed to store %s of run %s", kind, msg.run_id)
            detail = f"the monitor failed on this {kind}: {type(exc).__name__}"
            context.abort(grpc.StatusCode.INTERNAL, detail)
        stats.count(kind, "accepted")
        self._ctx.hub.publish(msg.run_id)
        return pb.Ack()


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call whose metadata lacks `authorization: Bearer <ingest token>`."""

    def __init__(self, token: str, on_refused: Callable[[], None]) -> None:
        self._expected = f"Bearer {token}".encode()
        self._on_refused = on_refused

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Pass authorised calls on; answer the others UNAUTHENTICATED."""
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get(AUTH_METADATA_KEY)
        if isinstance(given, str) and hmac.compare_digest(given.encode(), self._expected):
            return continuation(handler_call_details)
        self._on_refused()
        detail = (
            f"missing metadata '{AUTH_METADATA_KEY}: Bearer <token>'"
            if given is None
            else "the ingest token is not valid"
        )
        return grpc.unary_unary_rpc_method_handler(_refuse(detail))


def _refuse(detail: str) -> Callable[[Any, grpc.ServicerContext], None]:
    def handler(_request: Any, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, detail)

    return handler


def build_grpc_server(context: MonitorContext) -> tuple[grpc.Server, int]:
    """A gRPC server (not yet started) serving Telemetry on the settings' grpc host and port.

    Returns the server and the port it bound. Raises OSError if the port cannot be bound.
    """
    settings = context.settings
    interceptors: list[grpc.ServerInterceptor] = []
    if not settings.ingest_open:
        token = settings.ingest_token.get_secret_value()
        stats = context.ingest_stats
        interceptors.append(TokenInterceptor(token, lambda: stats.count("any", "unauthenticated")))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=GRPC_WORKERS, thread_name_prefix="ingest"),
        interceptors=interceptors,
        # A larger report is answered RESOURCE_EXHAUSTED before it is even parsed.
        options=[("grpc.max_receive_message_length", MAX_REPORT_BYTES)],
    )
    pb_grpc.add_TelemetryServicer_to_server(TelemetryIngest(context), server)
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen for telemetry on {address}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot listen for telemetry on {address}")
    return server, port
