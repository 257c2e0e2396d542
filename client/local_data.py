"""This client's data, built on the first message and kept in the SuperNode's context state.

Flower 1.39 starts a new ClientApp process for every message, so an in-process cache would
be rebuilt each round. The Context's state, which the SuperNode keeps for the whole run,
holds the partition instead: the first round partitions, later rounds read two arrays.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Array, ArrayRecord, Context

from fedq.data import LabeledArrays


def cached_arrays(context: Context, key: str, build: Callable[[], LabeledArrays]) -> LabeledArrays:
    """Return the arrays stored under `key` in `context.state`, building them once."""
    if key in context.state.array_records:
        record = context.state.array_records[key]
        return LabeledArrays(record["x"].numpy(), record["y"].numpy())
    data = build()
    context.state[key] = ArrayRecord({"x": Array(data.x), "y": Array(data.y)})
    return data
