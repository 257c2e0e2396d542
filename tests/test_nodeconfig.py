"""Node-config parsing of a SuperNode's partition."""

import pytest

from fedq.errors import ConfigError
from fedq.nodeconfig import NodeSettings


def test_valid_node_config():
    node = NodeSettings.from_node_config({"partition-id": 2, "num-partitions": 3})
    assert (node.partition_id, node.num_partitions) == (2, 3)


@pytest.mark.parametrize(
    ("node_config", "message"),
    [
        ({"num-partitions": 3}, r"node-config has no 'partition-id'"),
        (
            {"partition-id": 3, "num-partitions": 3},
            r"partition-id=3 is out of range; allowed: 0..2",
        ),
        ({"partition-id": "0", "num-partitions": 3}, r"partition-id='0' must be an integer"),
        ({"partition-id": 0, "num-partitions": 0}, r"num-partitions=0 must be >= 1"),
    ],
)
def test_bad_node_config_is_refused_clearly(node_config, message):
    with pytest.raises(ConfigError, match=message):
        NodeSettings.from_node_config(node_config)
