"""fedq's ClientApp, except that partition 1 sends a different bad update every round.

Everything else is fedq's own: the other partitions train and reply as usual, and the
hostile one trains too, then damages its reply after fedq's compression mod has encoded
it, so the bad bytes travel over Flower's gRPC exactly as a faulty or hostile client's
would. `BAD_MODELS` applies when the run sends whole models (no uplink codec),
`BAD_PAYLOADS` when it sends encoded updates; round r uses entry r.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from client.client_app import evaluate_global
from client.client_app import train as fedq_train
from client.compression import compression_mod
from fedq import wire
from fedq.nodeconfig import NodeSettings

HOSTILE_PARTITION = 1
BAD_MODELS = {
    1: "nan",
    2: "shape",
    3: "examples-zero",
    4: "examples-huge",
    5: "keys",
    6: "dtype",
    7: "inf",
}
BAD_PAYLOADS = {1: "garbage", 2: "truncated", 3: "bitflip", 4: "not-bytes"}

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """fedq's training and encoding; partition 1 then damages the reply."""
    reply = compression_mod(msg, context, fedq_train)
    node = NodeSettings.from_node_config(context.node_config)
    if node.partition_id != HOSTILE_PARTITION or reply.has_error():
        return reply
    server_round = int(msg.content[wire.CONFIG][wire.SERVER_ROUND])
    if wire.UPDATE in reply.content.config_records:
        _damage_payload(reply, BAD_PAYLOADS.get(server_round))
    elif wire.ARRAYS in reply.content.array_records:
        _damage_model(reply, BAD_MODELS.get(server_round))
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """fedq's evaluation, unchanged."""
    return compression_mod(msg, context, evaluate_global)


def _damage_model(reply: Message, how: str | None) -> None:
    arrays = {k: v.numpy().copy() for k, v in reply.content[wire.ARRAYS].items()}
    first = next(iter(arrays))
    metrics = reply.content.metric_records[wire.METRICS]
    if how == "nan":
        arrays[first].flat[0] = np.nan
    elif how == "inf":
        arrays[first].flat[-1] = np.inf
    elif how == "shape":
        arrays[first] = np.zeros((1, 2), np.float32)
    elif how == "keys":
        arrays.pop(next(reversed(arrays)))
    elif how == "dtype":
        arrays[first] = arrays[first].astype(np.float64)
    elif how == "examples-zero":
        metrics[wire.NUM_EXAMPLES] = 0
    elif how == "examples-huge":
        metrics[wire.NUM_EXAMPLES] = 10**12
    reply.content[wire.ARRAYS] = ArrayRecord({k: Array(v) for k, v in arrays.items()})


def _damage_payload(reply: Message, how: str | None) -> None:
    record = reply.content.config_records[wire.UPDATE]
    payload = bytes(record[wire.PAYLOAD])
    if how == "garbage":
        record[wire.PAYLOAD] = np.random.default_rng(0).bytes(len(payload))
    elif how == "truncated":
        record[wire.PAYLOAD] = payload[: len(payload) // 2]
    elif how == "bitflip":
        middle = len(payload) // 2
        record[wire.PAYLOAD] = (
            payload[:middle] + bytes([payload[middle] ^ 0x10]) + payload[middle + 1 :]
        )
    elif how == "not-bytes":
        record[wire.PAYLOAD] = "a string where bytes belong"
