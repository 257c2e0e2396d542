"""TelemetrySender: the ServerApp's reports to the monitor, never holding training up.

`send` only appends to a bounded queue; a background thread delivers the reports in order,
retrying with exponential backoff while the monitor is away. When the queue is full the oldest
report is dropped and counted. Nothing here raises into the caller once constructed.
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

Report = pb.RunStarted | pb.RoundReport | pb.RunFinished

# Which RPC carries which message.
_METHOD_OF: dict[type, str] = {
    pb.RunStarted: "StartRun",
    pb.RoundReport: "ReportRound",
    pb.RunFinished: "FinishRun",
}
# Codes after which the same report may succeed later; any other code will never succeed.
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)

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
    refused: int  # refused by the monitor (bad token, invalid report); never retried
    abandoned: int  # still queued when close() ran out of time, or sent after close()
    retries: int  # failed attempts that were retried


class TelemetrySender:
    """Delivers RunStarted, RoundReport and RunFinished messages to the monitor's Telemetry.

    `address` is the monitor's gRPC `host:port`; `token` its ingest token (sent as the
    metadata `authorization: Bearer <token>`; empty for a monitor in dev mode). At most
    `max_queue` reports wait; backoff between attempts starts at `backoff_initial` seconds and
    doubles up to `backoff_max`; each attempt may take `rpc_timeout` seconds.
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
    ) -> None:
        _check_arguments(address, max_queue, rpc_timeout, backoff_initial, backoff_max)
        self.address = address
        self._max_queue = max_queue
        self._rpc_timeout = rpc_timeout
        self._backoff = (backoff_initial, backoff_max)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        # gRPC's own reconnect backoff must not outgrow ours, or a returning monitor waits.
        options = [
            ("grpc.initial_reconnect_backoff_ms", int(backoff_initial * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(backoff_max * 1000)),
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
        self._counts = dict.fromkeys(("delivered", "dropped", "refused", "abandoned", "retries"), 0)
        self._monitor_down = False
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
        with self._cond:
            if self._closing:
                self._counts["abandoned"] += 1
                return
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
            outcome = self._deliver(report)
            with self._cond:
                if outcome is _Outcome.RETRY:
                    attempt += 1
                    self._counts["retries"] += 1
                else:
                    attempt = 0
                    self._settle(report, outcome)
                    continue
            self._back_off(attempt)

    def _next(self) -> Report | None:
        """The report at the head of the queue (left there), or None when it is time to stop."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._closing)
            if self._queue and time.monotonic() < self._deadline:
                return self._queue[0]
            self._counts["abandoned"] += len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
            return None

    def _deliver(self, report: Report) -> _Outcome:
        call = getattr(self._stub, _METHOD_OF[type(report)])
        with self._cond:
            timeout = min(self._rpc_timeout, max(0.05, self._deadline - time.monotonic()))
        try:
            call(report, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            return self._failed(report, exc)
        except Exception:  # a bug or a broken channel must not end the thread
            log.exception("telemetry: unexpected error sending %s", type(report).__name__)
            return _Outcome.RETRY
        if self._monitor_down:
            self._monitor_down = False
            log.info("telemetry: monitor at %s is back; delivering", self.address)
        return _Outcome.DELIVERED

    def _failed(self, report: Report, exc: grpc.RpcError) -> _Outcome:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        if code in _RETRYABLE:
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
            "telemetry: monitor refused a %s (%s: %s); not retried",
            type(report).__name__,
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
        # Full jitter keeps many ServerApps from retrying against one monitor in lockstep.
        delay = random.uniform(0.5, 1.0) * min(ceiling, initial * 2 ** (attempt - 1))
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
