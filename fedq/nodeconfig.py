"""A SuperNode's node-config: which data the client holds (its own, or a partition)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedq.datasources import DataSource, parse_data_source
from fedq.errors import ConfigError

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
CLIENT_ID = "client-id"  # optional: a name that survives reconnects (default: Flower's node id)
AVAILABILITY = "availability"  # optional: see fedq/availability.py (default: the run's)
TORCH_THREADS = "torch-threads"  # optional: intra-op threads for local training (default 1)
DATA = "data"  # optional: this client's own data, KIND:WHERE (fedq/datasources.py)
LABEL_COLUMN = "label-column"  # optional: csv/hf label column (default "label")
FEATURE_COLUMN = "feature-column"  # optional: hf feature column
VAL_FRACTION = "val-fraction"  # optional: share of own data held out for evaluation (0.1)


@dataclass(frozen=True)
class NodeSettings:
    """This client's partition (`partition_id` in [0, num_partitions)), name and availability."""

    partition_id: int
    num_partitions: int
    client_id: str | None = None
    availability: str | None = None
    # One thread: the small models here train ~15x faster than with two threads, which
    # spend their time synchronizing; raise it for large models on many-core clients.
    torch_threads: int = 1
    data: DataSource | None = None  # None: this client's partition of the embedded digits
    val_fraction: float = 0.1

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> NodeSettings:
        """Parse and check Flower's node-config (same keys on both engines)."""
        values = {}
        for key in (PARTITION_ID, NUM_PARTITIONS):
            if key not in node_config:
                raise ConfigError(f"node-config has no {key!r}; set it with --node-config")
            value = node_config[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"node-config {key}={value!r} must be an integer")
            values[key] = value
        if values[NUM_PARTITIONS] < 1:
            raise ConfigError(f"node-config {NUM_PARTITIONS}={values[NUM_PARTITIONS]} must be >= 1")
        if not 0 <= values[PARTITION_ID] < values[NUM_PARTITIONS]:
            raise ConfigError(
                f"node-config {PARTITION_ID}={values[PARTITION_ID]} is out of range; "
                f"allowed: 0..{values[NUM_PARTITIONS] - 1}"
            )
        client_id = node_config.get(CLIENT_ID)
        if client_id is not None and (not isinstance(client_id, str) or not client_id):
            raise ConfigError(f"node-config {CLIENT_ID}={client_id!r} must be a non-empty string")
        availability = node_config.get(AVAILABILITY)
        if availability is not None and not isinstance(availability, str):
            raise ConfigError(f"node-config {AVAILABILITY}={availability!r} must be a string")
        threads = node_config.get(TORCH_THREADS, 1)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"node-config {TORCH_THREADS}={threads!r} must be an integer >= 1")
        val_fraction = node_config.get(VAL_FRACTION, 0.1)
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float):
            raise ConfigError(f"node-config {VAL_FRACTION}={val_fraction!r} must be a number")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"node-config {VAL_FRACTION}={val_fraction!r} must be in (0, 1)")
        return cls(
            values[PARTITION_ID],
            values[NUM_PARTITIONS],
            client_id,
            availability,
            threads,
            _data_source(node_config),
            float(val_fraction),
        )


def _data_source(node_config: Mapping[str, Any]) -> DataSource | None:
    """The node's own data source, or None (its partition of the embedded digits)."""
    text = node_config.get(DATA)
    if text is None:
        return None
    columns = {}
    for key in (DATA, LABEL_COLUMN, FEATURE_COLUMN):
        value = node_config.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"node-config {key}={value!r} must be a non-empty string")
        columns[key] = value
    return parse_data_source(
        str(text),
        label_column=columns[LABEL_COLUMN] or "label",
        feature_column=columns[FEATURE_COLUMN],
    )
