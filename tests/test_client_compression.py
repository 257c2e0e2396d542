"""The client's end of the link: error feedback, the compressed model, the mod itself."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from client.client_app import app
from client.compression import (
    EF_RESIDUAL_KEY,
    compress_update,
    held_reference,
    received_model,
)
from fedq import wire
from fedq.models import ModelSpec, build_model
from quant import Codec
from strategies.downlink import ChangeDownlink
from tests.flower_messages import context, message


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
    record = ConfigRecord({wire.PAYLOAD: payload, wire.KEYS: list(model)})
    arrays = received_model(RecordDict({wire.MODEL: record}), Codec.from_spec("bf16"))
    assert list(arrays) == ["w", "b"]
    for key, value in model.items():
        expected = torch.from_numpy(value).to(torch.bfloat16).to(torch.float32)
        assert torch.equal(torch.from_numpy(arrays[key].numpy()), expected)


NODE = {"partition-id": 0, "num-partitions": 4}


def _train_message(content: RecordDict) -> object:
    config = ConfigRecord(
        {wire.SERVER_ROUND: 1, wire.LOCAL_STEPS: 3, wire.BATCH_SIZE: 8, wire.LR: 0.1}
    )
    content[wire.CONFIG] = config
    return message(content, dst=11)


def test_the_mod_decodes_the_model_and_sends_back_the_encoded_update() -> None:
    model = build_model(ModelSpec("mlp"), seed=0).state_dict()
    arrays = {k: v.numpy() for k, v in model.items()}
    record = ConfigRecord(
        {
            wire.PAYLOAD: Codec.from_spec("bf16").encode(list(arrays.values())),
            wire.KEYS: list(arrays),
        }
    )
    ctx = context(NODE, {"compress": "int4+ef", "downlink": "bf16"})
    reply = app(_train_message(RecordDict({wire.MODEL: record})), ctx)
    assert wire.ARRAYS not in reply.content and wire.MODEL not in reply.content
    delta = Codec.from_spec("int4").decode(reply.content[wire.UPDATE][wire.PAYLOAD])
    residual = ctx.state.array_records[EF_RESIDUAL_KEY]
    # What the client trained from is the bf16 model; Δ + residual is its whole change.
    plain = app(_train_message(RecordDict({wire.ARRAYS: ArrayRecord(model)})), context(NODE))
    for (key, x), sent in zip(arrays.items(), delta, strict=True):
        start = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
        local = start + sent + residual[key].numpy()
        assert local.shape == x.shape
        assert not np.array_equal(local, start), "training changed nothing"
        # Same data and seed as a plain fp32 round, up to the bf16 start.
        np.testing.assert_allclose(local, plain.content[wire.ARRAYS][key].numpy(), atol=0.05)


def test_without_codecs_the_mod_passes_models_through_untouched() -> None:
    model = ArrayRecord(build_model(ModelSpec("mlp"), seed=0).state_dict())
    reply = app(_train_message(RecordDict({wire.ARRAYS: model})), context(NODE))
    assert set(reply.content.array_records) == {wire.ARRAYS}
    assert wire.UPDATE not in reply.content.config_records


def test_a_client_that_sits_out_sends_no_update_even_with_a_codec() -> None:
    model = ArrayRecord(build_model(ModelSpec("mlp"), seed=0).state_dict())
    ctx = context(NODE, {"compress": "int8", "availability": "bernoulli:0.000001"})
    reply = app(_train_message(RecordDict({wire.ARRAYS: model})), ctx)
    assert reply.content[wire.CLIENT][wire.PARTICIPATED] is False
    assert wire.UPDATE not in reply.content.config_records


def test_a_damaged_or_unusable_downlink_change_gets_an_error_reply_and_changes_nothing() -> None:
    model = {k: v.numpy() for k, v in build_model(ModelSpec("mlp"), seed=0).state_dict().items()}
    server = ChangeDownlink(Codec.from_spec("int8+ef"))
    ctx = context(NODE, {"compress": "int8", "downlink": "int8+ef"})

    def send(record: ConfigRecord, server_round: int):
        content = RecordDict({wire.MODEL: record})
        content[wire.CONFIG] = ConfigRecord(
            {wire.SERVER_ROUND: server_round, wire.LOCAL_STEPS: 2, wire.BATCH_SIZE: 8, wire.LR: 0.1}
        )
        return app(message(content, dst=11), ctx)

    server.broadcast(1, model)
    first = send(server.record_for(None), 1)
    assert not first.has_error() and first.content[wire.CLIENT][wire.MODEL_VERSION] == 1
    server.broadcast(2, {k: v + 0.01 for k, v in model.items()})
    change = server.record_for(1)
    damaged = ConfigRecord(dict(change.items()))
    payload = bytearray(change[wire.PAYLOAD])
    payload[len(payload) // 2] ^= 0xFF
    damaged[wire.PAYLOAD] = bytes(payload)
    stale = ConfigRecord({**dict(change.items()), wire.DELTA_OF: 5})
    no_keys = ConfigRecord({wire.PAYLOAD: change[wire.PAYLOAD], wire.DELTA_OF: 1})
    for record, reason in [
        (damaged, "downlink: PayloadError: CRC-32 mismatch"),
        (stale, "a change from model version 5, but this client holds version 1"),
        (no_keys, "the 'model' record has no list of 'keys'"),
    ]:
        answer = send(record, 2)
        assert answer.has_error() and reason in answer.error.reason, answer.error.reason
        held, version = held_reference(ctx.state)
        assert version == 1  # still the reference it held
    assert not send(change, 2).has_error()
    held, version = held_reference(ctx.state)
    assert version == 2
    for key, value in server.reference.items():
        np.testing.assert_array_equal(held[key], value)


def test_a_change_needs_a_reference_so_a_fresh_context_refuses_it() -> None:
    server = ChangeDownlink(Codec.from_spec("int4+ef"))
    model = {k: v.numpy() for k, v in build_model(ModelSpec("mlp"), seed=0).state_dict().items()}
    server.broadcast(1, model)
    server.broadcast(2, model)
    content = RecordDict({wire.MODEL: server.record_for(1)})
    reply = app(_train_message(content), context(NODE, {"downlink": "int4+ef"}))
    assert reply.has_error()
    assert reply.error.reason == (
        "downlink: DownlinkError: a change from model version 1, but this client holds no model"
    )
