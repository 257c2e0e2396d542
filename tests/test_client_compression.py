"""The client's side of the codecs: error feedback and the compressed global model."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from client.compression import EF_RESIDUAL_KEY, compress_update, received_model
from fedq import wire
from quant import Codec


def _delta(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((6, 50)).astype(np.float32),
        "b": rng.standard_normal(6).astype(np.float32),
    }


def test_error_feedback_sends_everything_eventually() -> None:
    # Telescoping: sum of what was sent + the residual left = sum of the true updates.
    codec = Codec.from_spec("topk:0.05+int4+ef")
    state = RecordDict()
    sent = {"w": np.zeros((6, 50)), "b": np.zeros(6)}
    true = {"w": np.zeros((6, 50)), "b": np.zeros(6)}
    for round_ in range(6):
        delta = _delta(round_)
        for key in true:
            true[key] += delta[key]
        decoded = codec.decode(compress_update(delta, codec, state, seed=round_))
        for key, value in zip(sent, decoded, strict=True):
            sent[key] += value
    residual = state.array_records[EF_RESIDUAL_KEY]
    for key in true:
        np.testing.assert_allclose(sent[key] + residual[key].numpy(), true[key], atol=1e-5)
    # Without error feedback nothing is kept, and top-k drops most of the update.
    plain = RecordDict()
    compress_update(_delta(0), Codec.from_spec("topk:0.05+int4"), plain, seed=0)
    assert EF_RESIDUAL_KEY not in plain.array_records


def test_a_residual_of_another_model_shape_is_dropped() -> None:
    codec = Codec.from_spec("sign+ef")
    state = RecordDict({EF_RESIDUAL_KEY: ArrayRecord({"w": Array(np.ones(3, np.float32))})})
    delta = _delta(1)
    payload = compress_update(delta, codec, state, seed=0)
    np.testing.assert_array_equal(
        codec.decode(payload)[0],
        Codec.from_spec("sign").decode(Codec.from_spec("sign").encode(list(delta.values())))[0],
    )


def test_the_compressed_global_model_is_read_in_model_key_order() -> None:
    model = _delta(2)
    payload = Codec.from_spec("bf16").encode(list(model.values()))
    content = RecordDict({wire.MODEL: ConfigRecord({wire.PAYLOAD: payload})})
    state = received_model(content, list(model), Codec.from_spec("bf16"))
    assert list(state) == ["w", "b"]
    for key, value in model.items():
        expected = torch.from_numpy(value).to(torch.bfloat16).to(torch.float32)
        assert torch.equal(state[key], expected)
