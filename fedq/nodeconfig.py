"""A SuperNode's node-config: which partition of the data the client holds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedq.errors import ConfigError

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"


@dataclass(frozen=True)
class NodeSettings:
    """This client's partition: `partition_id` in [0, num_partitions)."""

    partition_id: int
    num_partitions: int

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
        return cls(values[PARTITION_ID], values[NUM_PARTITIONS])
