"""Checks on incoming telemetry; each failure is one line: the field, its value, what is allowed."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping

from proto import telemetry_pb2 as pb
from proto.telemetry_limits import (
    MAX_CONFIG_BYTES,
    MAX_LABEL_CHARS,
    MAX_REASON_CHARS,
    RUN_ID_PATTERN,
)

FIGURE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$"
MAX_ROUND = 1_000_000
MAX_NAME_CHARS = 64
MAX_FIGURES = 64

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
    _check_config(msg.config_json)
    _check_label("RunStarted.name", msg.name)


def check_round_report(msg: pb.RoundReport) -> None:
    """Raise ReportError unless `msg` is a well-formed RoundReport."""
    _check_run_id("RoundReport", msg.run_id)
    if msg.round > MAX_ROUND:
        _fail("RoundReport.round", msg.round, f"0 ≤ round ≤ {MAX_ROUND}")
    _check_time("RoundReport.time", msg.time)
    _check_finite("RoundReport.elapsed_seconds", msg.elapsed_seconds, minimum=0.0)
    if msg.HasField("accuracy"):
        _check_finite("RoundReport.accuracy", msg.accuracy, minimum=0.0, maximum=1.0)
    for name in ("loss", "train_loss"):
        if msg.HasField(name):
            _check_finite(f"RoundReport.{name}", getattr(msg, name))
    for name in ("uplink_bits_per_param", "downlink_bits_per_param"):
        if msg.HasField(name):
            _check_finite(f"RoundReport.{name}", getattr(msg, name), minimum=0.0)
    _check_cumulative(msg)
    _check_nodes(msg)
    _check_reasons("RoundReport.failures", msg.failures)
    _check_reasons("RoundReport.rejected", msg.rejected)
    _check_figures("RoundReport.figures", msg.figures)
    for node, client in msg.clients.items():
        if client.HasField("train_loss"):
            _check_finite(f"RoundReport.clients[{node}].train_loss", client.train_loss)
        _check_figures(f"RoundReport.clients[{node}].figures", client.figures)
        _check_label(f"RoundReport.clients[{node}].client_id", client.client_id)


def check_run_finished(msg: pb.RunFinished) -> None:
    """Raise ReportError unless `msg` is a well-formed RunFinished."""
    _check_run_id("RunFinished", msg.run_id)
    _check_time("RunFinished.time", msg.time)
    if msg.status not in (pb.RUN_STATUS_COMPLETED, pb.RUN_STATUS_FAILED):
        _fail("RunFinished.status", msg.status, "RUN_STATUS_COMPLETED (1), RUN_STATUS_FAILED (2)")
    _check_text("RunFinished.reason", msg.reason)


def _fail(field: str, value: object, allowed: str) -> None:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise ReportError(f"{field}={shown} is not allowed; allowed: {allowed}")


def _check_run_id(message: str, run_id: str) -> None:
    if not _RUN_ID.match(run_id):
        _fail(
            f"{message}.run_id",
            run_id,
            "1 to 128 characters from A-Z a-z 0-9 . _ : -, starting with a letter or digit",
        )


def _check_time(field: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        _fail(field, value, "Unix time in seconds, > 0")


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
    try:
        config = json.loads(config_json)
    except json.JSONDecodeError:
        config = None
    if not isinstance(config, dict):
        _fail("RunStarted.config_json", config_json, "a JSON object")


def _check_cumulative(msg: pb.RoundReport) -> None:
    for name in ("bytes_up", "bytes_down", "fp32_bytes_up", "fp32_bytes_down"):
        total = getattr(msg, f"cum_{name}")
        if total < getattr(msg, name):
            _fail(f"RoundReport.cum_{name}", total, f"≥ {name} ({getattr(msg, name)})")


def _check_nodes(msg: pb.RoundReport) -> None:
    participants = _unique("RoundReport.participants", msg.participants)
    others = _unique("RoundReport.non_participants", msg.non_participants)
    both = sorted(participants & others)
    if both:
        _fail("RoundReport.non_participants", both, "nodes not listed in participants")


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
    for name, value in figures.items():
        if not _FIGURE_NAME.match(name):
            _fail(f"{field} name", name, "1 to 64 characters from A-Z a-z 0-9 _ . : -")
        _check_finite(f"{field}[{name!r}]", value)
