"""Hypothesis over the telemetry ingest of a real `python -m monitor`, over gRPC.

Whatever a sender puts in a report, the monitor answers OK or INVALID_ARGUMENT (with a
one-line reason naming the message), never another code, a crash or a hang; and after each
report every read of the REST API still answers 200. Bytes that are no protobuf message are
answered INTERNAL by gRPC itself. Example counts are fixed, so CI runs the same amount.
"""

from __future__ import annotations

import json

import grpc
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto import telemetry_pb2 as pb
from proto import telemetry_pb2_grpc as pb_grpc
from proto.telemetry_limits import MAX_COUNT, RUN_ID_PATTERN
from tests.monitor.conftest import INGEST_TOKEN, MonitorProcess
from tests.monitor.sample_runs import sample_run

AUTH = (("authorization", f"Bearer {INGEST_TOKEN}"),)
EXAMPLES = 25
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CALL_TIMEOUT_S = 20.0

# Values near every bound, and anything else.
_U64 = st.one_of(
    st.sampled_from([0, 1, MAX_COUNT, MAX_COUNT + 1, 2**62 + 2**61, 2**63 - 1, 2**63, 2**64 - 1]),
    st.integers(0, 2**64 - 1),
)
_U32 = st.integers(0, 2**32 - 1)
_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
_TIME = st.one_of(st.floats(1.6e9, 1.9e9), _FLOAT)
_TEXT = st.text(max_size=40)
_RUN_ID = st.one_of(
    st.sampled_from(["fuzz-a", "fuzz-b", "fuzz-c"]), st.from_regex(RUN_ID_PATTERN), _TEXT
)
_NODES = st.lists(_U64, max_size=12)
_FIGURES = st.dictionaries(
    st.one_of(st.sampled_from(["fedau_weight", "consensus_distance"]), _TEXT), _FLOAT, max_size=4
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _FLOAT | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=12,
)


@st.composite
def _node_reasons(draw) -> list[pb.NodeReason]:
    pairs = draw(st.lists(st.tuples(_U64, st.text(max_size=60)), max_size=4))
    return [pb.NodeReason(node_id=node, reason=reason) for node, reason in pairs]


@st.composite
def round_reports(draw) -> pb.RoundReport:
    """Any RoundReport: every field drawn, near its bounds or anywhere."""
    msg = pb.RoundReport(
        run_id=draw(_RUN_ID),
        round=draw(st.one_of(st.integers(0, 20), _U32)),
        time=draw(_TIME),
        elapsed_seconds=draw(_FLOAT),
        participants=draw(_NODES),
        non_participants=draw(_NODES),
        failures=draw(_node_reasons()),
        rejected=draw(_node_reasons()),
        figures=draw(_FIGURES),
    )
    for name in ("accuracy", "loss", "train_loss", "uplink_bits_per_param"):
        value = draw(st.none() | st.floats(0, 1) | _FLOAT)
        if value is not None:
            setattr(msg, name, value)
    for name in ("bytes_up", "bytes_down", "fp32_bytes_up", "fp32_bytes_down"):
        value = draw(_U64)
        setattr(msg, name, value)
        setattr(msg, f"cum_{name}", draw(st.sampled_from([value, value * 2]) | _U64) % 2**64)
    for node in draw(st.lists(_U64, max_size=5)):
        client = msg.clients[node]
        client.bytes_up, client.bytes_down = draw(_U64), draw(_U64)
        client.client_id = draw(_TEXT)
        client.figures.update(draw(_FIGURES))
        if draw(st.booleans()):
            client.num_examples = draw(_U64)
        if draw(st.booleans()):
            client.train_loss = draw(_FLOAT)
    return msg


@st.composite
def run_starts(draw) -> pb.RunStarted:
    """Any RunStarted, its configuration JSON of any shape or no JSON at all."""
    config = draw(st.one_of(st.dictionaries(_TEXT, _JSON, max_size=4), _JSON).map(_dumps) | _TEXT)
    return pb.RunStarted(
        run_id=draw(_RUN_ID),
        time=draw(_TIME),
        strategy=draw(_TEXT),
        model=draw(_TEXT),
        num_parameters=draw(_U64),
        clients_expected=draw(_U32),
        config_json=config,
        name=draw(st.text(max_size=200)),
    )


def _dumps(value: object) -> str:
    return json.dumps(value)  # NaN and Infinity come out as bare words, as a bug would send


@st.composite
def run_ends(draw) -> pb.RunFinished:
    """Any RunFinished, an unknown status included."""
    return pb.RunFinished(
        run_id=draw(_RUN_ID),
        time=draw(_TIME),
        status=draw(st.integers(0, 3)),
        reason=draw(st.text(max_size=100)),
    )


@st.composite
def heartbeats(draw) -> pb.RunAlive:
    """Any RunAlive."""
    return pb.RunAlive(run_id=draw(_RUN_ID), time=draw(_TIME), interval_seconds=draw(_FLOAT))


_METHODS = {
    pb.RunStarted: "StartRun",
    pb.RoundReport: "ReportRound",
    pb.RunFinished: "FinishRun",
    pb.RunAlive: "Heartbeat",
}


def _send(monitor: MonitorProcess, msg) -> None:
    """Send `msg`; assert the answer is documented and the REST API is whole afterwards."""
    with grpc.insecure_channel(monitor.grpc_address) as channel:
        call = getattr(pb_grpc.TelemetryStub(channel), _METHODS[type(msg)])
        try:
            call(msg, metadata=AUTH, timeout=CALL_TIMEOUT_S)
            accepted = True
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
            details = exc.details()
            assert details.startswith(type(msg).__name__) and "\n" not in details, details
            assert "is not allowed; allowed: " in details, details
            accepted = False
    # A heartbeat of a run never reported is acknowledged and stores nothing.
    stored = accepted and not isinstance(msg, pb.RunAlive)
    _assert_reads_work(monitor, msg.run_id if stored else None)


def _assert_reads_work(monitor: MonitorProcess, run_id: str | None) -> None:
    base = monitor.http_url
    for path in ("/healthz", "/api/runs", "/metrics"):
        response = httpx.get(base + path, timeout=CALL_TIMEOUT_S)
        assert response.status_code == 200, (path, response.text)
    if run_id is not None:
        for tail in ("", "/rounds", "/clients"):
            response = httpx.get(f"{base}/api/runs/{run_id}{tail}", timeout=CALL_TIMEOUT_S)
            assert response.status_code == 200, (tail, response.text)
        # The event stream of a running run goes on: its head is checked, then it is closed.
        url = f"{base}/api/runs/{run_id}/events"
        with httpx.stream("GET", url, timeout=CALL_TIMEOUT_S) as response:
            assert response.status_code == 200


@FUZZ
@given(msg=round_reports())
def test_any_round_report_is_stored_or_refused_as_invalid(shared_monitor, msg) -> None:
    _send(shared_monitor, msg)


@FUZZ
@given(msg=run_starts())
def test_any_run_started_is_stored_or_refused_as_invalid(shared_monitor, msg) -> None:
    _send(shared_monitor, msg)


@FUZZ
@given(msg=st.one_of(run_ends(), heartbeats()))
def test_any_run_finished_or_heartbeat_is_stored_or_refused(shared_monitor, msg) -> None:
    _send(shared_monitor, msg)


@FUZZ
@given(
    cut=st.integers(0, 400),
    noise=st.binary(min_size=1, max_size=16),
    method=st.sampled_from(["StartRun", "ReportRound"]),
)
def test_damaged_bytes_are_parsed_or_refused_never_a_crash(
    shared_monitor, cut: int, noise: bytes, method: str
) -> None:
    run = sample_run("fuzz-bytes", rounds=1)
    good = (run.started if method == "StartRun" else run.rounds[1]).SerializeToString()
    data = good[:cut] + noise + good[cut + len(noise) :]
    message_type = pb.RunStarted if method == "StartRun" else pb.RoundReport
    try:
        message_type.FromString(data)
        parses = True
    except Exception:  # DecodeError: what gRPC's own deserializer meets as well
        parses = False
    with grpc.insecure_channel(shared_monitor.grpc_address) as channel:
        call = channel.unary_unary(f"/fedq.telemetry.v1.Telemetry/{method}")
        try:
            call(data, metadata=AUTH, timeout=CALL_TIMEOUT_S)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
    allowed = (
        {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
        if parses
        else {grpc.StatusCode.INTERNAL}
    )
    assert code in allowed
    _assert_reads_work(shared_monitor, None)
