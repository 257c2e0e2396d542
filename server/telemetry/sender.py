"""TelemetrySender: the ServerApp's reports to the monitor, never holding training up.

`send` only appends to a bounded queue; a background thread delivers the reports in order,
retrying with exponential backoff while the monitor is away. When the queue is full the oldest
report is dropped and counted. Nothing here raises into the caller once constructed.

Which answers are retried (proto/telemetry.proto lists the monitor's codes):
- UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, CANCELLED (the monitor is away, busy or
  stopping): retried until delivered, or until close() runs out of time.
- UNKNOWN, INTERNAL, RESOURCE_EXHAUSTED (a fault of the monitor, or a report too large):
  tried MAX_FAULT_ATTEMPTS times in all, then dropped as refused.
- every other code (INVALID_ARGUMENT, UNAUTHENTICATED, ...): final; refused at once.
A report larger than MAX_REPORT_BYTES is refused before it is sent. Each refusal is logged
with the monitor's reason.

While every report is delivered and a run is open (started, not finished), the sender tells
the monitor every `heartbeat` seconds that the run is alive (a RunAlive), so a run whose
ServerApp died shows as stale there instead of running forever.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum

import grpc

from proto import telemetry_pb2 as pb
from proto import telemetry_pb2_grpc as pb_grpc
from proto.telemetry_limits import MAX_REPORT_BYTES

Report = pb.RunStarted | pb.RoundReport | pb.RunFinished

# Which RPC carries which message.
_METHOD_OF: dict[type, str] = {
    pb.RunStarted: "StartRun",
    pb.RoundReport: "ReportRound",
    pb.RunFinished: "FinishRun",
}
# Codes of a monitor that is away, busy or stopping: the same report succeeds later.
_RETRY_UNTIL_CLOSED = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)
# Codes of a fault (the monitor's, or a report too large): tried this many times in all.
_RETRY_A_FEW = frozenset(
    {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
MAX_FAULT_ATTEMPTS = 3
# Once close() is called, retries come at least this often (seconds), so a monitor that
# comes back gets the last reports soon.
CLOSING_BACKOFF_MAX = 2.0
# gRPC's own reconnect backoff, at most (seconds): a returning monitor is found this fast.
RECONNECT_BACKOFF_MAX = 2.0
# Seconds between heartbeats of an open run while nothing else is sent (0: none).
HEARTBEAT_SECONDS = 10.0

log = logging.getLogger(__name__)


class _Outcome(Enum):
    DELIVERED = "delivered"
    REFUSED = "refused"
    RETRY = "retry"


@dataclass(frozen=True)
class SenderStats:
    """Counts of reports (messages) since the sender was built."""

    queued: int  # waiting to be delivered, the one in flight included
    delivered: int  # acknowledged by the monitor
    dropped: int  # oldest reports pushed out of a full queue
    refused: int  # refused by the monitor (bad token, invalid report) or too large
    abandoned: int  # still queued when close() ran out of time, or sent after close()
    retries: int  # failed attempts that were retried
    heartbeats: int = 0  # RunAlive messages the monitor acknowledged


class TelemetrySender:
    """Delivers RunStarted, RoundReport and RunFinished messages to the monitor's Telemetry.

    `address` is the monitor's gRPC `host:port`; `token` its ingest token (sent as the
    metadata `authorization: Bearer <token>`; empty for a monitor in dev mode). At most
    `max_queue` reports wait; backoff between attempts starts at `backoff_initial` seconds and
    doubles up to `backoff_max`; each attempt may take `rpc_timeout` seconds. While idle, an
    open run's heartbeat goes out every `heartbeat` seconds (0: never).
    """

    def __init__(
        self,
        address: str,
        token: str,
        *,
        max_queue: int = 1000,
        rpc_timeout: float = 5.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        _check_arguments(address, max_queue, rpc_timeout, backoff_initial, backoff_max)
        if heartbeat < 0:
            raise ValueError(f"heartbeat={heartbeat} is not allowed; allowed: ≥ 0 seconds")
        self._heartbeat = heartbeat
        self.address = address
        self._max_queue = max_queue
        self._rpc_timeout = rpc_timeout
        self._backoff = (backoff_initial, backoff_max)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        # gRPC's own reconnect backoff must stay short, or a returning monitor waits for it.
        reconnect_max = min(backoff_max, RECONNECT_BACKOFF_MAX)
        options = [
            ("grpc.initial_reconnect_backoff_ms", int(min(backoff_initial, reconnect_max) * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(reconnect_max * 1000)),
            ("grpc.max_send_message_length", MAX_REPORT_BYTES),
        ]
        self._channel = (
            grpc.secure_channel(address, credentials, options=options)
            if credentials is not None
            else grpc.insecure_channel(address, options=options)
        )
        self._stub = pb_grpc.TelemetryStub(self._channel)
        self._queue: deque[Report] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = float("inf")
        self._counts = dict.fromkeys(
            ("delivered", "dropped", "refused", "abandoned", "retries", "heartbeats"), 0
        )
        self._monitor_down = False
        self._open_runs: set[str] = set()  # started or reported, not yet finished
        self._thread = threading.Thread(target=self._run, name="fedq-telemetry", daemon=True)
        self._thread.start()

    def send(self, report: Report) -> None:
        """Queue `report` for delivery and return at once; never raises, never blocks."""
        try:
            self._enqueue(report)
        except Exception:  # the contract is that training never sees our failures
            log.exception("telemetry: could not queue a %s", type(report).__name__)

    def _enqueue(self, report: Report) -> None:
        if type(report) not in _METHOD_OF:
            log.error("telemetry: %r is not a telemetry report; ignored", type(report).__name__)
            return
        size = report.ByteSize()
        with self._cond:
            if self._closing:
                self._counts["abandoned"] += 1
                return
            if size > MAX_REPORT_BYTES:
                self._counts["refused"] += 1
                log.warning(
                    "telemetry: a %s of %d bytes is over the monitor's limit of %d; not sent",
                    type(report).__name__,
                    size,
                    MAX_REPORT_BYTES,
                )
                return
            if isinstance(report, pb.RunFinished):
                self._open_runs.discard(report.run_id)
            else:
                self._open_runs.add(report.run_id)
            if len(self._queue) >= self._max_queue:
                self._queue.popleft()
                self._counts["dropped"] += 1
                if self._counts["dropped"] == 1:
                    log.warning("telemetry: queue full (%d); dropping the oldest", self._max_queue)
            self._queue.append(report)
            self._cond.notify_all()

    @property
    def stats(self) -> SenderStats:
        """Counts so far."""
        with self._cond:
            return SenderStats(queued=len(self._queue), **self._counts)

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the queue to empty; True if it did."""
        deadline = time.monotonic() + timeout
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._queue, timeout=max(0.0, deadline - time.monotonic())
            )

    def close(self, timeout: float = 5.0) -> SenderStats:
        """Deliver what can be delivered within `timeout` seconds, then stop; never raises.

        Reports still queued after that are counted as abandoned. Returns the final counts.
        """
        try:
            with self._cond:
                self._closing = True
                self._deadline = time.monotonic() + max(0.0, timeout)
                self._cond.notify_all()
            self._thread.join(timeout + self._rpc_timeout + 1.0)
            self._channel.close()
        except Exception:
            log.exception("telemetry: error while closing the sender")
        final = self.stats
        if final.abandoned or final.dropped or final.queued:
            log.warning("telemetry: %s", final)
        return final

    # -- background thread ---------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while (report := self._next()) is not None:
            if isinstance(report, list):
                self._beat(report)
                continue
            outcome = self._deliver(report, attempt + 1)
            with self._cond:
                if outcome is _Outcome.RETRY:
                    attempt += 1
                    self._counts["retries"] += 1
                else:
                    attempt = 0
                    self._settle(report, outcome)
            if outcome is _Outcome.RETRY:
                self._back_off(attempt)
            elif outcome is _Outcome.DELIVERED and isinstance(report, pb.RunStarted):
                # The monitor learns the run's heartbeat interval at once, so it can tell a
                # dead ServerApp even in a run whose reports leave no idle interval.
                self._beat([report.run_id])

    def _next(self) -> Report | list[str] | None:
        """The report at the head of the queue (left there), or None when it is time to stop.

        When nothing was queued for a heartbeat interval: the open runs, as a list (maybe
        empty: then there is no one to send a heartbeat for).
        """
        with self._cond:
            timeout = self._heartbeat or None
            if not self._cond.wait_for(lambda: self._queue or self._closing, timeout=timeout):
                return sorted(self._open_runs)
            if self._queue and time.monotonic() < self._deadline:
                return self._queue[0]
            self._counts["abandoned"] += len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
            return None

    def _beat(self, run_ids: list[str]) -> None:
        """Send one RunAlive per open run; a failure is only logged (the next one may pass)."""
        if not self._heartbeat:
            return
        for run_id in run_ids:
            alive = pb.RunAlive(run_id=run_id, time=time.time(), interval_seconds=self._heartbeat)
            try:
                self._stub.Heartbeat(alive, timeout=self._rpc_timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                log.debug("telemetry: heartbeat of run %s failed (%s)", run_id, code)
                continue
            with self._cond:
                self._counts["heartbeats"] += 1

    def _deliver(self, report: Report, attempt: int) -> _Outcome:
        call = getattr(self._stub, _METHOD_OF[type(report)])
        with self._cond:
            timeout = min(self._rpc_timeout, max(0.05, self._deadline - time.monotonic()))
        try:
            call(report, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            return self._failed(report, exc, attempt)
        except Exception:  # a bug or a broken channel must not end the thread
            log.exception("telemetry: unexpected error sending %s", type(report).__name__)
            return _Outcome.RETRY
        if self._monitor_down:
            self._monitor_down = False
            log.info("telemetry: monitor at %s is back; delivering", self.address)
        return _Outcome.DELIVERED

    def _failed(self, report: Report, exc: grpc.RpcError, attempt: int) -> _Outcome:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        if code in _RETRY_A_FEW and attempt < MAX_FAULT_ATTEMPTS:
            log.warning(
                "telemetry: the monitor failed on a %s (%s: %s); attempt %d of %d",
                type(report).__name__,
                code.name,
                detail,
                attempt,
                MAX_FAULT_ATTEMPTS,
            )
            return _Outcome.RETRY
        if code in _RETRY_UNTIL_CLOSED:
            if not self._monitor_down:
                self._monitor_down = True
                log.warning(
                    "telemetry: monitor at %s unreachable (%s: %s); keeping reports, retrying",
                    self.address,
                    code.name,
                    detail,
                )
            return _Outcome.RETRY
        log.warning(
            "telemetry: monitor refused a %s of run %s (%s: %s); dropped, not retried",
            type(report).__name__,
            report.run_id,
            code.name,
            detail,
        )
        return _Outcome.REFUSED

    def _settle(self, report: Report, outcome: _Outcome) -> None:
        """Take a finished report off the queue (call with the lock held)."""
        if self._queue and self._queue[0] is report:
            self._queue.popleft()
        elif outcome is _Outcome.DELIVERED:
            # The overflow dropped it while it was in flight, yet it arrived: not a loss.
            self._counts["dropped"] -= 1
        self._counts[outcome.value] += 1
        self._cond.notify_all()

    def _back_off(self, attempt: int) -> None:
        initial, ceiling = self._backoff
        with self._cond:
            if self._closing:
                ceiling = min(ceiling, CLOSING_BACKOFF_MAX)
        # Full jitter keeps many ServerApps from retrying against one monitor in lockstep.
        delay = random.uniform(0.5, 1.0) * min(ceiling, initial * 2 ** min(attempt - 1, 30))
        with self._cond:
            was_closing = self._closing
            delay = min(delay, max(0.0, self._deadline - time.monotonic()))
            # close() cuts a long wait short once; after that the remaining time is used.
            self._cond.wait_for(lambda: self._closing and not was_closing, timeout=delay)


def _check_arguments(
    address: str, max_queue: int, rpc_timeout: float, backoff_initial: float, backoff_max: float
) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address={address!r} is not allowed; allowed: 'host:port'")
    if max_queue < 1:
        raise ValueError(f"max_queue={max_queue} is not allowed; allowed: ≥ 1 reports")
    if rpc_timeout <= 0:
        raise ValueError(f"rpc_timeout={rpc_timeout} is not allowed; allowed: > 0 seconds")
    if not 0 < backoff_initial <= backoff_max:
        raise ValueError(
            f"backoff_initial={backoff_initial}, backoff_max={backoff_max} are not allowed; "
            "allowed: 0 < backoff_initial ≤ backoff_max (seconds)"
        )
