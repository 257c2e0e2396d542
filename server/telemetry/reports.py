"""Builders of telemetry messages from what the ServerApp already has (config, round records)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from proto import telemetry_pb2 as pb
from proto.telemetry_limits import MAX_LABEL_CHARS, MAX_REASON_CHARS

# How a record's value becomes the value of a scalar field, by the field's C++ type.
_SCALAR_TYPE: dict[int, Callable[[Any], Any]] = {
    FieldDescriptor.CPPTYPE_INT32: int,
    FieldDescriptor.CPPTYPE_INT64: int,
    FieldDescriptor.CPPTYPE_UINT32: int,
    FieldDescriptor.CPPTYPE_UINT64: int,
    FieldDescriptor.CPPTYPE_DOUBLE: float,
    FieldDescriptor.CPPTYPE_FLOAT: float,
    FieldDescriptor.CPPTYPE_BOOL: bool,
    FieldDescriptor.CPPTYPE_STRING: str,
}


def run_started(
    run_id: str,
    *,
    strategy: str,
    model: str,
    num_parameters: int,
    clients_expected: int,
    config: Mapping[str, Any],
    started_at: float | None = None,
    name: str = "",
) -> pb.RunStarted:
    """A RunStarted; `started_at` is Unix time in seconds (now if None).

    `name` is what people see (the run directory's name), shortened to what the monitor
    accepts.
    """
    return pb.RunStarted(
        run_id=run_id,
        time=time.time() if started_at is None else started_at,
        strategy=strategy,
        model=model,
        num_parameters=num_parameters,
        clients_expected=clients_expected,
        config_json=json.dumps(dict(config), sort_keys=True, default=str),
        name=_shorten(name, MAX_LABEL_CHARS),
    )


def round_report(run_id: str, record: Mapping[str, Any]) -> pb.RoundReport:
    """A RoundReport from one rounds.jsonl record (server/round_recorder.py).

    Every key named like a RoundReport field is copied (proto/telemetry.proto is the list);
    a missing or None value leaves the field unset. Besides the recorder's keys the record may
    carry `time` (Unix seconds; now if absent), `non_participants`, `rejected` ([{node,
    reason}], like `failures`), `figures` (name → number), the `fp32_*` and `cum_fp32_*` byte
    counts, `downlink_bits_per_param`, and per client `figures` and `client_id`. Reasons and
    client ids longer than the monitor accepts are shortened.
    """
    msg = pb.RoundReport()
    _copy_fields(msg, record)
    msg.run_id = run_id
    msg.round = int(record["round"])  # required: a record without its round is a bug
    msg.time = msg.time or time.time()
    msg.failures.extend(_reasons(record.get("failures") or ()))
    msg.rejected.extend(_reasons(record.get("rejected") or ()))
    for node, client in (record.get("clients") or {}).items():
        entry = msg.clients[int(node)]
        _copy_fields(entry, client)
        entry.client_id = _shorten(entry.client_id, MAX_LABEL_CHARS)
    return msg


def run_finished(
    run_id: str, *, failed: bool = False, reason: str = "", finished_at: float | None = None
) -> pb.RunFinished:
    """A RunFinished: completed, or failed with `reason`; `finished_at` in Unix seconds."""
    return pb.RunFinished(
        run_id=run_id,
        time=time.time() if finished_at is None else finished_at,
        status=pb.RUN_STATUS_FAILED if failed else pb.RUN_STATUS_COMPLETED,
        reason=_shorten(reason, MAX_REASON_CHARS),
    )


def _copy_fields(msg: Message, record: Mapping[str, Any]) -> None:
    """Set `msg`'s scalar fields, repeated scalars and maps of scalars from `record`'s values.

    The message's descriptor is the list of fields. A missing or None value leaves the field
    unset. Fields that hold messages (failures, rejected, clients) are left to the caller:
    their records are shaped differently from the messages.
    """
    for field in msg.DESCRIPTOR.fields:
        value = record.get(field.name)
        if value is None:
            continue
        if field.message_type is None:
            convert = _SCALAR_TYPE[field.cpp_type]
            if field.is_repeated:
                getattr(msg, field.name).extend(convert(v) for v in value)
            else:
                setattr(msg, field.name, convert(value))
        elif field.message_type.GetOptions().map_entry:
            key, item = field.message_type.fields
            if item.message_type is None:
                to_key, to_item = _SCALAR_TYPE[key.cpp_type], _SCALAR_TYPE[item.cpp_type]
                getattr(msg, field.name).update({to_key(k): to_item(v) for k, v in value.items()})


def _reasons(items: Iterable[Mapping[str, Any]]) -> list[pb.NodeReason]:
    return [
        pb.NodeReason(
            node_id=int(item["node"]), reason=_shorten(str(item["reason"]), MAX_REASON_CHARS) or "-"
        )
        for item in items
    ]


def _shorten(text: str, limit: int) -> str:
    """`text`, or its first `limit` - 1 characters and an ellipsis when it is longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
