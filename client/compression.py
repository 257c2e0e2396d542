"""The client's end of the link: a Flower mod that decodes the model and encodes the update.

`compression_mod` wraps any ClientApp function, the way Flower's client mods do, so the
function itself trains on plain arrays and replies with its whole model:

* in: a ``model`` record (the global model encoded by the run's ``downlink`` codec) becomes
  the ``arrays`` record the function expects; with a downlink of changes (``downlink`` a
  codec spec other than fp32, bf16, fp16) the record holds the change from the reference
  model the client keeps in its Context state, or the whole model (`received_change`);
* out: with an uplink codec (run-config ``compress``) a train reply's ``arrays`` (the local
  model x_n) become Δ = x_n - x_t encoded as an ``update`` record, with error feedback if
  the codec asks for it.

Error feedback (codec spec ending in ``+ef``): the client adds the residual it could not
send last time to this round's Δ, sends C(Δ + e), and keeps e ← (Δ + e) - C(Δ + e) in its
Flower Context state for the next round it takes part in. C(·) is exactly what the server
decodes, because the client decodes its own bytes to get it.

A message whose ``model`` record cannot be used (damaged bytes, a change from a reference
the client does not hold) gets an error reply with the reason, as Flower sends for a
failed ClientApp; the server then sends that client the whole model next time.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from client.training import round_seed
from fedq import wire
from fedq.nodeconfig import NodeSettings
from fedq.runconfig import RunConfig
from quant.codec import Codec
from quant.errors import PayloadError

# Context-state key of the error-feedback residual e (one array per model tensor).
EF_RESIDUAL_KEY = "fedq.ef-residual"
# Context-state keys of the reference model the client holds (a downlink of changes) and
# of its version (the server round whose broadcast made it).
HELD_MODEL_KEY = "fedq.downlink-model"
HELD_VERSION_KEY = "fedq.downlink-version"
# The codec of a whole model sent with a downlink of changes (strategies/downlink.py).
WHOLE_MODEL = Codec.from_spec("fp32")


class DownlinkError(ValueError):
    """A ``model`` record the client cannot use; the message is the reason."""


def compression_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Decode the incoming model, call the app, encode the outgoing update (see module)."""
    run = RunConfig.from_mapping(context.run_config)
    if wire.MODEL in msg.content.config_records:
        try:
            if run.downlink_changes:
                model = received_change(msg.content, run.downlink_codec, context.state)
            else:
                model = received_model(msg.content, run.downlink_codec)
        except (PayloadError, ValueError) as exc:
            reason = f"downlink: {type(exc).__name__}: {exc}"
            return Message(Error(ErrorCode.MOD_FAILED_PRECONDITION, reason), reply_to=msg)
        msg.content[wire.ARRAYS] = model
        del msg.content[wire.MODEL]
    is_train = wire.category(msg.metadata.message_type) == "train"
    sent = msg.content.array_records.get(wire.ARRAYS)
    # Decoding the sent model costs a copy per tensor: only an encoded update needs it.
    encodes = is_train and run.uplink_codec is not None and sent is not None
    reference = {k: v.numpy() for k, v in sent.items()} if encodes else None
    reply = call_next(msg, context)
    if run.downlink_changes and not reply.has_error():
        _report_held_version(reply, context.state)
    local = None if reply.has_error() else reply.content.array_records.get(wire.ARRAYS)
    if local is None or reference is None:
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


def received_change(content: RecordDict, codec: Codec, state: RecordDict) -> ArrayRecord:
    """The model of a ``model`` record of a downlink of changes (strategies/downlink.py).

    With ``delta-of`` the payload is the change, encoded by ``codec``, from the reference
    model of that version, which the client must hold (in ``state``, its Context state);
    without, it is the whole model: in fp32, or encoded by ``codec.dense()`` (its value
    format, no sparsifier) when ``by-codec`` is set (the run's first model). With
    ``model-version`` the result becomes the held reference of that version; without, it
    is a one-off (evaluation).

    Raises DownlinkError on a malformed record or a reference the client does not hold,
    and `quant.errors.PayloadError` on bad bytes; the held reference is then unchanged.
    """
    record = content.config_records[wire.MODEL]
    keys = _model_keys(record)
    payload = record.get(wire.PAYLOAD)
    if not isinstance(payload, bytes):
        raise DownlinkError(f"the {wire.MODEL!r} record has no {wire.PAYLOAD!r} bytes")
    base = record.get(wire.DELTA_OF)
    if base is None:
        whole = codec.dense() if record.get(wire.BY_CODEC) is True else WHOLE_MODEL
        model = dict(zip(keys, _checked_count(whole.decode(payload), keys), strict=True))
    else:
        held, version = held_reference(state)
        if held is None or version != base:
            holds = "no model" if held is None else f"version {version}"
            raise DownlinkError(
                f"a change from model version {base}, but this client holds {holds}"
            )
        if list(held) != keys:
            raise DownlinkError(f"the change's keys {keys} are not the held model's {list(held)}")
        change = _checked_count(codec.decode(payload), keys)
        model = {}
        for (key, start), step in zip(held.items(), change, strict=True):
            if step.shape != start.shape or step.dtype != start.dtype:
                raise DownlinkError(
                    f"{key}: change {step.dtype}{list(step.shape)} does not fit the held "
                    f"{start.dtype}{list(start.shape)}"
                )
            model[key] = start + step
    version = record.get(wire.MODEL_VERSION)
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int):
            raise DownlinkError(f"{wire.MODEL_VERSION}={version!r} must be an integer")
        state[HELD_MODEL_KEY] = ArrayRecord({key: Array(value) for key, value in model.items()})
        state[HELD_VERSION_KEY] = ConfigRecord({wire.MODEL_VERSION: version})
    return ArrayRecord({key: Array(value) for key, value in model.items()})


def held_reference(state: RecordDict) -> tuple[dict[str, np.ndarray] | None, int | None]:
    """(the reference model the client holds, its version), or (None, None)."""
    model = state.array_records.get(HELD_MODEL_KEY)
    version = state.config_records.get(HELD_VERSION_KEY)
    if model is None or version is None:
        return None, None
    return {key: value.numpy() for key, value in model.items()}, version[wire.MODEL_VERSION]


def _report_held_version(reply: Message, state: RecordDict) -> None:
    """Tell the server, in a train reply's ``client`` record, which reference it holds."""
    identity = reply.content.config_records.get(wire.CLIENT)
    _, version = held_reference(state)
    if identity is not None and version is not None:
        identity[wire.MODEL_VERSION] = version


def _model_keys(record: ConfigRecord) -> list[str]:
    keys = record.get(wire.KEYS)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise DownlinkError(f"the {wire.MODEL!r} record has no list of {wire.KEYS!r}")
    return keys


def _checked_count(arrays: list[np.ndarray], keys: list[str]) -> list[np.ndarray]:
    if len(arrays) != len(keys):
        raise DownlinkError(f"the model record names {len(keys)} tensors but holds {len(arrays)}")
    return arrays


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
