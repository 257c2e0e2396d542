"""A SuperNode's node-config: which partition of the data the client holds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedq.errors import ConfigError

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
CLIENT_ID = "client-id"  # optional: a name that survives reconnects (default: Flower's node id)
AVAILABILITY = "availability"  # optional: see fedq/availability.py (default: the run's)
TORCH_THREADS = "torch-threads"  # optional: intra-op threads for local training (default 1)


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
        return cls(values[PARTITION_ID], values[NUM_PARTITIONS], client_id, availability, threads)
