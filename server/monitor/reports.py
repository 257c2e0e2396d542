"""Builders of telemetry messages from what the ServerApp already has (config, round records)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from proto import telemetry_pb2 as pb
from server.monitor.validation import MAX_REASON_CHARS

# Per-round counters a round record may carry, copied as they are (bytes).
_COUNTERS = (
    "bytes_up",
    "bytes_down",
    "cum_bytes_up",
    "cum_bytes_down",
    "fp32_bytes_up",
    "fp32_bytes_down",
    "cum_fp32_bytes_up",
    "cum_fp32_bytes_down",
)
_OPTIONAL_FLOATS = (
    "accuracy",
    "loss",
    "train_loss",
    "uplink_bits_per_param",
    "downlink_bits_per_param",
)


def run_started(
    run_id: str,
    *,
    strategy: str,
    model: str,
    num_parameters: int,
    clients_expected: int,
    config: Mapping[str, Any],
    started_at: float | None = None,
) -> pb.RunStarted:
    """A RunStarted; `started_at` is Unix time in seconds (now if None)."""
    return pb.RunStarted(
        run_id=run_id,
        time=time.time() if started_at is None else started_at,
        strategy=strategy,
        model=model,
        num_parameters=num_parameters,
        clients_expected=clients_expected,
        config_json=json.dumps(dict(config), sort_keys=True, default=str),
    )


def round_report(run_id: str, record: Mapping[str, Any]) -> pb.RoundReport:
    """A RoundReport from one rounds.jsonl record (server/round_recorder.py).

    Besides the recorder's keys the record may carry `time` (Unix seconds; now if absent),
    `non_participants`, `rejected` ([{node, reason}], like `failures`), `figures` (name →
    number), the `fp32_*` and `cum_fp32_*` byte counts, `downlink_bits_per_param`, and per
    client `figures`. Reasons longer than the monitor accepts are shortened.
    """
    msg = pb.RoundReport(
        run_id=run_id,
        round=int(record["round"]),
        time=float(record.get("time") or time.time()),
        elapsed_seconds=float(record.get("elapsed_seconds") or 0.0),
        participants=[int(n) for n in record.get("participants", ())],
        non_participants=[int(n) for n in record.get("non_participants", ())],
        failures=_reasons(record.get("failures", ())),
        rejected=_reasons(record.get("rejected", ())),
        figures={str(k): float(v) for k, v in (record.get("figures") or {}).items()},
    )
    for name in _COUNTERS:
        setattr(msg, name, int(record.get(name) or 0))
    for name in _OPTIONAL_FLOATS:
        if record.get(name) is not None:
            setattr(msg, name, float(record[name]))
    for node, client in (record.get("clients") or {}).items():
        msg.clients[int(node)].CopyFrom(_client_round(client))
    return msg


def run_finished(
    run_id: str, *, failed: bool = False, reason: str = "", finished_at: float | None = None
) -> pb.RunFinished:
    """A RunFinished: completed, or failed with `reason`; `finished_at` in Unix seconds."""
    return pb.RunFinished(
        run_id=run_id,
        time=time.time() if finished_at is None else finished_at,
        status=pb.RUN_STATUS_FAILED if failed else pb.RUN_STATUS_COMPLETED,
        reason=_shorten(reason),
    )


def _client_round(client: Mapping[str, Any]) -> pb.ClientRound:
    msg = pb.ClientRound(
        bytes_up=int(client.get("bytes_up") or 0),
        bytes_down=int(client.get("bytes_down") or 0),
        figures={str(k): float(v) for k, v in (client.get("figures") or {}).items()},
    )
    if client.get("num_examples") is not None:
        msg.num_examples = int(client["num_examples"])
    if client.get("train_loss") is not None:
        msg.train_loss = float(client["train_loss"])
    return msg


def _reasons(items: Iterable[Mapping[str, Any]]) -> list[pb.NodeReason]:
    return [
        pb.NodeReason(node_id=int(item["node"]), reason=_shorten(str(item["reason"])) or "-")
        for item in items
    ]


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"
