"""Checks on incoming telemetry; each failure is one line: the field, its value, what is allowed.

Every field and every list of a report has a bound (proto/telemetry_limits.py for those the
sender shares, the constants below for the rest), so no report can grow the database beyond a
known size, overflow a sum, or break a later read. NaN and ±Inf in a metric (accuracy, loss,
train_loss, figures) are not refused: the store records them as non-finite.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import NoReturn

from proto import telemetry_pb2 as pb
from proto.telemetry_limits import (
    MAX_CONFIG_BYTES,
    MAX_COUNT,
    MAX_HEARTBEAT_SECONDS,
    MAX_LABEL_CHARS,
    MAX_NODES_PER_ROUND,
    MAX_REASON_CHARS,
    MIN_HEARTBEAT_SECONDS,
    RUN_ID_PATTERN,
)

FIGURE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$"
MAX_ROUND = 1_000_000
MAX_NAME_CHARS = 64
MAX_FIGURES = 64
# RunStarted.clients_expected: a federation of at most a million clients.
MAX_CLIENTS_EXPECTED = 1_000_000
# RunStarted.config_json: objects and arrays nested at most this deep.
MAX_CONFIG_DEPTH = 8
# Unix times: after 1970 and before 2100 (pydantic reads larger numbers as milliseconds).
MAX_UNIX_TIME = 4_102_444_800.0
# RoundReport.elapsed_seconds: at most ten years.
MAX_ELAPSED_SECONDS = 10 * 365 * 86_400.0
# The byte counts of a RoundReport, each at most MAX_COUNT.
BYTE_FIELDS = ("bytes_up", "bytes_down", "fp32_bytes_up", "fp32_bytes_down")
# The RoundReport metrics that may be NaN or ±Inf (recorded as non-finite, not refused).
ROUND_METRICS = ("accuracy", "loss", "train_loss")

_RUN_ID = re.compile(RUN_ID_PATTERN)
_FIGURE_NAME = re.compile(FIGURE_NAME_PATTERN)


class ReportError(ValueError):
    """A telemetry message is malformed; the message says which field and why."""


def check_run_started(msg: pb.RunStarted) -> None:
    """Raise ReportError unless `msg` is a well-formed RunStarted."""
    _check_run_id("RunStarted", msg.run_id)
    _check_time("RunStarted.time", msg.time)
    _check_name("RunStarted.strategy", msg.strategy, required=True)
    _check_name("RunStarted.model", msg.model, required=False)
    _check_count("RunStarted.num_parameters", msg.num_parameters)
    if msg.clients_expected > MAX_CLIENTS_EXPECTED:
        _fail("RunStarted.clients_expected", msg.clients_expected, f"≤ {MAX_CLIENTS_EXPECTED}")
    _check_config(msg.config_json)
    _check_label("RunStarted.name", msg.name)


def check_round_report(msg: pb.RoundReport) -> None:
    """Raise ReportError unless `msg` is a well-formed RoundReport."""
    _check_run_id("RoundReport", msg.run_id)
    if msg.round > MAX_ROUND:
        _fail("RoundReport.round", msg.round, f"0 ≤ round ≤ {MAX_ROUND}")
    _check_time("RoundReport.time", msg.time)
    _check_finite(
        "RoundReport.elapsed_seconds",
        msg.elapsed_seconds,
        minimum=0.0,
        maximum=MAX_ELAPSED_SECONDS,
    )
    # NaN and ±Inf pass (recorded as non-finite); a finite accuracy lies in [0, 1].
    if msg.HasField("accuracy") and math.isfinite(msg.accuracy):
        _check_finite("RoundReport.accuracy", msg.accuracy, minimum=0.0, maximum=1.0)
    for name in ("uplink_bits_per_param", "downlink_bits_per_param"):
        if msg.HasField(name):
            _check_finite(f"RoundReport.{name}", getattr(msg, name), minimum=0.0)
    _check_bytes(msg)
    _check_nodes(msg)
    _check_reasons("RoundReport.failures", msg.failures)
    _check_reasons("RoundReport.rejected", msg.rejected)
    _check_figures("RoundReport.figures", msg.figures)
    for node, client in msg.clients.items():
        field = f"RoundReport.clients[{node}]"
        _check_count(f"{field}.bytes_up", client.bytes_up)
        _check_count(f"{field}.bytes_down", client.bytes_down)
        if client.HasField("num_examples"):
            _check_count(f"{field}.num_examples", client.num_examples)
        _check_figures(f"{field}.figures", client.figures)
        _check_label(f"{field}.client_id", client.client_id)


def check_run_finished(msg: pb.RunFinished) -> None:
    """Raise ReportError unless `msg` is a well-formed RunFinished."""
    _check_run_id("RunFinished", msg.run_id)
    _check_time("RunFinished.time", msg.time)
    if msg.status not in (pb.RUN_STATUS_COMPLETED, pb.RUN_STATUS_FAILED):
        _fail("RunFinished.status", msg.status, "RUN_STATUS_COMPLETED (1), RUN_STATUS_FAILED (2)")
    _check_text("RunFinished.reason", msg.reason)


def check_run_alive(msg: pb.RunAlive) -> None:
    """Raise ReportError unless `msg` is a well-formed RunAlive (heartbeat)."""
    _check_run_id("RunAlive", msg.run_id)
    _check_time("RunAlive.time", msg.time)
    _check_finite(
        "RunAlive.interval_seconds",
        msg.interval_seconds,
        minimum=MIN_HEARTBEAT_SECONDS,
        maximum=MAX_HEARTBEAT_SECONDS,
    )


def non_finite_fields(msg: pb.RoundReport) -> list[str]:
    """The metrics of a report that are NaN or ±Inf, by path: "loss", "figures.<name>",
    "clients.<node>.train_loss", "clients.<node>.figures.<name>"; sorted within each part.
    """
    found = [
        name
        for name in ROUND_METRICS
        if msg.HasField(name) and not math.isfinite(getattr(msg, name))
    ]
    found += _non_finite_figures("figures", msg.figures)
    for node in sorted(msg.clients):
        client = msg.clients[node]
        if client.HasField("train_loss") and not math.isfinite(client.train_loss):
            found.append(f"clients.{node}.train_loss")
        found += _non_finite_figures(f"clients.{node}.figures", client.figures)
    return found


def _non_finite_figures(prefix: str, figures: Mapping[str, float]) -> list[str]:
    return [
        f"{prefix}.{name}" for name, value in sorted(figures.items()) if not math.isfinite(value)
    ]


def _fail(field: str, value: object, allowed: str) -> NoReturn:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise ReportError(f"{field}={shown} is not allowed; allowed: {allowed}")


def _check_run_id(message: str, run_id: str) -> None:
    if not _RUN_ID.fullmatch(run_id):  # match() would let "id\n" through
        _fail(
            f"{message}.run_id",
            run_id,
            "1 to 128 characters from A-Z a-z 0-9 . _ : -, starting with a letter or digit",
        )


def _check_time(field: str, value: float) -> None:
    if not (math.isfinite(value) and 0 < value < MAX_UNIX_TIME):
        _fail(field, value, f"Unix time in seconds, 0 < time < {MAX_UNIX_TIME:.0f} (year 2100)")


def _check_count(field: str, value: int) -> None:
    if value > MAX_COUNT:
        _fail(field, value, f"≤ {MAX_COUNT} (2^53 - 1)")


def _check_finite(
    field: str, value: float, minimum: float | None = None, maximum: float | None = None
) -> None:
    low = -math.inf if minimum is None else minimum
    high = math.inf if maximum is None else maximum
    if not (math.isfinite(value) and low <= value <= high):
        parts = [f"{minimum} ≤" if minimum is not None else "", "a finite number"]
        parts.append(f"≤ {maximum}" if maximum is not None else "")
        _fail(field, value, " ".join(p for p in parts if p))


def _check_name(field: str, value: str, required: bool) -> None:
    if (required and not value) or len(value) > MAX_NAME_CHARS or not value.isprintable():
        least = 1 if required else 0
        _fail(field, value, f"{least} to {MAX_NAME_CHARS} printable characters")


def _check_label(field: str, value: str) -> None:
    # Shown as text only (never markup), so any characters may stand in it.
    if len(value) > MAX_LABEL_CHARS:
        _fail(field, value, f"at most {MAX_LABEL_CHARS} characters")


def _check_text(field: str, value: str) -> None:
    if len(value) > MAX_REASON_CHARS:
        _fail(field, value, f"at most {MAX_REASON_CHARS} characters")


def _check_config(config_json: str) -> None:
    if not config_json:
        return
    if len(config_json.encode()) > MAX_CONFIG_BYTES:
        _fail("RunStarted.config_json", config_json, f"at most {MAX_CONFIG_BYTES} bytes")
    allowed = f"a JSON object of finite numbers, nested at most {MAX_CONFIG_DEPTH} deep"
    try:
        # NaN and Infinity would break every JSON answer that carries the configuration.
        config = json.loads(config_json, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # not JSON, NaN, an integer of > 4,300 digits
        _fail("RunStarted.config_json", config_json, allowed)
    if not isinstance(config, dict) or not _plain_json(config):
        _fail("RunStarted.config_json", config_json, allowed)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a finite number")


def _plain_json(value: object) -> bool:
    """True when `value` nests at most MAX_CONFIG_DEPTH deep and holds only finite numbers."""
    todo: list[tuple[object, int]] = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict | list):
            if depth > MAX_CONFIG_DEPTH:
                return False
            children = item.values() if isinstance(item, dict) else item
            todo.extend((child, depth + 1) for child in children)
        elif isinstance(item, float) and not math.isfinite(item):  # 1e999 parses as inf
            return False
    return True


def _check_bytes(msg: pb.RoundReport) -> None:
    for name in BYTE_FIELDS:
        value, total = getattr(msg, name), getattr(msg, f"cum_{name}")
        _check_count(f"RoundReport.{name}", value)
        _check_count(f"RoundReport.cum_{name}", total)
        if total < value:
            _fail(f"RoundReport.cum_{name}", total, f"≥ {name} ({value})")


def _check_nodes(msg: pb.RoundReport) -> None:
    for name in ("participants", "non_participants", "failures", "rejected", "clients"):
        size = len(getattr(msg, name))
        if size > MAX_NODES_PER_ROUND:
            _fail(f"RoundReport.{name}", f"{size} entries", f"at most {MAX_NODES_PER_ROUND}")
    participants = _unique("RoundReport.participants", msg.participants)
    others = _unique("RoundReport.non_participants", msg.non_participants)
    both = sorted(participants & others)
    if both:
        _fail("RoundReport.non_participants", both, "nodes not listed in participants")
    named = participants | others | set(msg.clients)
    named.update(item.node_id for item in msg.failures)
    named.update(item.node_id for item in msg.rejected)
    if len(named) > MAX_NODES_PER_ROUND:
        _fail("RoundReport", f"{len(named)} distinct nodes", f"at most {MAX_NODES_PER_ROUND}")


def _unique(field: str, nodes: Iterable[int]) -> set[int]:
    seen: set[int] = set()
    for node in nodes:
        if node in seen:
            _fail(field, node, "each node id once")
        seen.add(node)
    return seen


def _check_reasons(field: str, items: Iterable[pb.NodeReason]) -> None:
    for item in items:
        if not item.reason:
            _fail(f"{field}[node {item.node_id}].reason", item.reason, "a non-empty reason")
        _check_text(f"{field}[node {item.node_id}].reason", item.reason)


def _check_figures(field: str, figures: Mapping[str, float]) -> None:
    if len(figures) > MAX_FIGURES:
        _fail(field, f"{len(figures)} figures", f"at most {MAX_FIGURES}")
    for name in figures:
        if not _FIGURE_NAME.fullmatch(name):
            _fail(f"{field} name", name, "1 to 64 characters from A-Z a-z 0-9 _ . : -")
