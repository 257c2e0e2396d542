"""The client's side of the codecs: read the global model, compress the update Δ.

Error feedback (codec spec ending in ``+ef``): the client adds the residual it could not
send last time to this round's Δ, sends C(Δ + e), and keeps e ← (Δ + e) - C(Δ + e) in its
Flower Context state for the next round it takes part in. C(·) is exactly what the server
decodes, because the client decodes its own bytes to get it.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from fedq import wire
from quant.codec import Codec

# Context-state key of the error-feedback residual e (one array per model tensor).
EF_RESIDUAL_KEY = "fedq.ef-residual"


def received_model(
    content: RecordDict, keys: list[str], downlink: Codec | None
) -> dict[str, torch.Tensor]:
    """The global model x_t of a train instruction, as a state dict with ``keys``.

    It comes as fp32 arrays, or (``downlink`` set) as a compressed ``model`` record whose
    arrays follow the order of ``keys``. Raises `quant.errors.PayloadError` on bad bytes.
    """
    if wire.MODEL in content.config_records:
        if downlink is None:
            raise ValueError("received a compressed model but the run's downlink is fp32")
        arrays = downlink.decode(content.config_records[wire.MODEL][wire.PAYLOAD])
        if len(arrays) != len(keys):
            raise ValueError(f"the model has {len(keys)} tensors, the server sent {len(arrays)}")
        return {key: torch.from_numpy(array) for key, array in zip(keys, arrays, strict=True)}
    return content.array_records[wire.ARRAYS].to_torch_state_dict()


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
