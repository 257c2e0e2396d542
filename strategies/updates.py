"""What the server reads out of a client's train reply: the model update Δ, checked.

A reply carries its update in one of two forms:

* ``arrays`` (an ArrayRecord): the client's whole local model x_n, as Flower's FedAvg
  expects; Δ = x_n - x_t.
* ``update`` (a ConfigRecord with ``payload`` bytes): Δ itself, compressed by the run's
  uplink codec (``compress``), arrays in the order of the global model's keys.

Either way the update is checked (keys, shapes, finite values) before any strategy uses it;
a defect raises `UpdateRejected` with the reason, and the strategy drops that reply only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from fedq import wire
from quant.codec import Codec
from quant.errors import PayloadError


class UpdateRejected(ValueError):
    """A participant's reply cannot be used; the message is the reason."""


@dataclass
class RoundOutcome:
    """What one aggregation saw: who took part, their weights, what was rejected."""

    participants: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    rejected: list[dict[str, str]] = field(default_factory=list)
    nodes: dict[str, int] = field(default_factory=dict)  # client -> its latest Flower node id


def reply_delta(
    content: RecordDict, base: dict[str, np.ndarray], uplink: Codec | None
) -> dict[str, np.ndarray]:
    """Δ_n of one reply as float64 arrays keyed like ``base`` (the global model x_t).

    ``uplink`` is the run's codec (None: replies carry whole models as arrays).
    Raises `UpdateRejected` naming what is wrong.
    """
    if uplink is None:
        return _model_delta(content.array_records.get(wire.ARRAYS), base)
    record = content.config_records.get(wire.UPDATE)
    if record is None or wire.PAYLOAD not in record:
        raise UpdateRejected(f"no {wire.UPDATE!r} record with a {wire.PAYLOAD!r} in the reply")
    payload = record[wire.PAYLOAD]
    if not isinstance(payload, bytes):
        raise UpdateRejected(f"{wire.PAYLOAD!r} is {type(payload).__name__}, expected bytes")
    try:
        arrays = uplink.decode(payload)
    except PayloadError as exc:
        raise UpdateRejected(f"payload rejected: {exc}") from None
    if len(arrays) != len(base):
        raise UpdateRejected(f"payload has {len(arrays)} arrays, the model has {len(base)}")
    delta = {}
    for (key, x), array in zip(base.items(), arrays, strict=True):
        if array.shape != x.shape:
            raise UpdateRejected(f"{key}: shape {array.shape} != global shape {x.shape}")
        delta[key] = array.astype(np.float64)
    return delta


def arrays_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord as numpy arrays, in its key order."""
    return {key: value.numpy() for key, value in record.items()}


def _model_delta(arrays: ArrayRecord | None, base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Δ = x_local - x_t, after checking keys, shapes and finiteness."""
    if arrays is None:
        raise UpdateRejected(f"no {wire.ARRAYS!r} record in the reply")
    if set(arrays.keys()) != set(base):
        missing, extra = set(base) - set(arrays.keys()), set(arrays.keys()) - set(base)
        raise UpdateRejected(
            f"array keys differ (missing {sorted(missing)}, extra {sorted(extra)})"
        )
    delta = {}
    for key, x in base.items():
        local = arrays[key].numpy()
        if local.shape != x.shape:
            raise UpdateRejected(f"{key}: shape {local.shape} != global shape {x.shape}")
        if not np.all(np.isfinite(local)):
            raise UpdateRejected(f"{key}: holds NaN or Inf")
        delta[key] = local.astype(np.float64) - x
    return delta
