"""The client's end of the link: a Flower mod that decodes the model and encodes the update.

`compression_mod` wraps any ClientApp function, the way Flower's client mods do, so the
function itself trains on plain arrays and replies with its whole model:

* in: a ``model`` record (the global model encoded by the run's ``downlink`` codec) becomes
  the ``arrays`` record the function expects;
* out: with an uplink codec (run-config ``compress``) a train reply's ``arrays`` (the local
  model x_n) become Δ = x_n - x_t encoded as an ``update`` record, with error feedback if
  the codec asks for it.

Error feedback (codec spec ending in ``+ef``): the client adds the residual it could not
send last time to this round's Δ, sends C(Δ + e), and keeps e ← (Δ + e) - C(Δ + e) in its
Flower Context state for the next round it takes part in. C(·) is exactly what the server
decodes, because the client decodes its own bytes to get it.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from client.training import round_seed
from fedq import wire
from fedq.nodeconfig import NodeSettings
from fedq.runconfig import RunConfig
from quant.codec import Codec

# Context-state key of the error-feedback residual e (one array per model tensor).
EF_RESIDUAL_KEY = "fedq.ef-residual"


def compression_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Decode the incoming model, call the app, encode the outgoing update (see module)."""
    run = RunConfig.from_mapping(context.run_config)
    if wire.MODEL in msg.content.config_records:
        msg.content[wire.ARRAYS] = received_model(msg.content, run.downlink_codec)
        del msg.content[wire.MODEL]
    sent = msg.content.array_records.get(wire.ARRAYS)
    reference = {k: v.numpy() for k, v in sent.items()} if sent is not None else None
    reply = call_next(msg, context)
    local = None if reply.has_error() else reply.content.array_records.get(wire.ARRAYS)
    is_train = wire.category(msg.metadata.message_type) == "train"
    if not is_train or run.uplink_codec is None or local is None or reference is None:
        return reply
    delta = {key: local[key].numpy() - reference[key] for key in local}
    node = NodeSettings.from_node_config(context.node_config)
    server_round = int(msg.content[wire.CONFIG][wire.SERVER_ROUND])
    seed = round_seed(run.seed, server_round, node.partition_id)
    payload = compress_update(delta, run.uplink_codec, context.state, seed)
    del reply.content[wire.ARRAYS]
    reply.content[wire.UPDATE] = ConfigRecord({wire.PAYLOAD: payload})
    return reply


def received_model(content: RecordDict, downlink: Codec | None) -> ArrayRecord:
    """The global model of a ``model`` record, as the ArrayRecord the server encoded.

    Raises ValueError when the run has no downlink codec or the record is malformed, and
    `quant.errors.PayloadError` on bad bytes.
    """
    if downlink is None:
        raise ValueError("received a compressed model but the run's downlink is fp32")
    record = content.config_records[wire.MODEL]
    keys = record.get(wire.KEYS)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"the {wire.MODEL!r} record has no list of {wire.KEYS!r}")
    arrays = downlink.decode(record[wire.PAYLOAD])
    if len(arrays) != len(keys):
        raise ValueError(f"the model record names {len(keys)} tensors but holds {len(arrays)}")
    return ArrayRecord({key: Array(array) for key, array in zip(keys, arrays, strict=True)})


def compress_update(
    delta: dict[str, np.ndarray], codec: Codec, state: RecordDict, seed: int
) -> bytes:
    """Encode Δ (float32 arrays in model order) with ``codec``; apply error feedback.

    ``seed`` seeds the codec's randomness (randk positions, stochastic rounding).
    ``state`` is the client's Context state, which holds the residual between rounds.
    """
    if codec.error_feedback:
        residual = _residual(state, delta)
        delta = {key: value + residual[key] for key, value in delta.items()}
    payload = codec.encode(list(delta.values()), generator=torch.Generator().manual_seed(seed))
    if codec.error_feedback:
        sent = codec.decode(payload)
        state[EF_RESIDUAL_KEY] = ArrayRecord(
            {key: Array(value - s) for (key, value), s in zip(delta.items(), sent, strict=True)}
        )
    return payload


def _residual(state: RecordDict, delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The stored residual, or zeros when there is none or the model changed shape."""
    record = state.array_records.get(EF_RESIDUAL_KEY)
    if record is not None and list(record.keys()) == list(delta):
        stored = {key: record[key].numpy() for key in delta}
        if all(stored[key].shape == value.shape for key, value in delta.items()):
            return stored
    return {key: np.zeros_like(value) for key, value in delta.items()}
