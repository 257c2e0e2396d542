"""The ClientApp's handlers, called as a SuperNode calls them, with real data and models."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from client.client_app import evaluate_global, train
from client.local_data import TRAIN_KEY
from fedq import wire
from fedq.data import PartitionSpec, load_partition
from fedq.errors import ConfigError
from fedq.models import ModelSpec, build_model
from tests.flower_messages import context, message

NODE = {"partition-id": 1, "num-partitions": 3}
RUN = {"model": "mlp", "seed": 3}


def _train_message(model, server_round=1, steps=5):
    config = ConfigRecord(
        {
            wire.SERVER_ROUND: server_round,
            wire.LOCAL_STEPS: steps,
            wire.BATCH_SIZE: 16,
            wire.LR: 0.1,
        }
    )
    content = RecordDict({wire.ARRAYS: ArrayRecord(model.state_dict()), wire.CONFIG: config})
    return message(content, dst=11)


def test_train_replies_with_new_weights_and_its_example_count():
    model = build_model(ModelSpec("mlp"), seed=3)
    ctx = context(NODE, RUN)
    reply = train(_train_message(model), ctx)
    metrics = reply.content.metric_records[wire.METRICS]
    expected = len(load_partition(PartitionSpec(num_partitions=3, seed=3), 1))
    assert metrics[wire.NUM_EXAMPLES] == expected
    assert 0.0 < metrics[wire.TRAIN_LOSS] < 5.0
    new = reply.content.array_records[wire.ARRAYS].to_torch_state_dict()
    old = model.state_dict()
    assert new.keys() == old.keys()
    assert any(not torch.equal(new[k], old[k]) for k in old), "training changed nothing"
    # The partition is cached in the SuperNode's context state for later rounds.
    cached = ctx.state.array_records[TRAIN_KEY]
    assert cached["y"].numpy().shape == (expected,)


def test_a_round_is_reproducible_and_rounds_differ():
    model = build_model(ModelSpec("mlp"), seed=3)
    first = train(_train_message(model, server_round=1), context(NODE, RUN))
    again = train(_train_message(model, server_round=1), context(NODE, RUN))
    other = train(_train_message(model, server_round=2), context(NODE, RUN))

    def weights(reply):
        return reply.content.array_records[wire.ARRAYS].to_numpy_ndarrays()

    assert all(np.array_equal(a, b) for a, b in zip(weights(first), weights(again), strict=True))
    assert not all(
        np.array_equal(a, b) for a, b in zip(weights(first), weights(other), strict=True)
    )


def test_evaluate_reports_accuracy_on_the_local_test_share():
    model = build_model(ModelSpec("mlp"), seed=3)
    content = RecordDict(
        {wire.ARRAYS: ArrayRecord(model.state_dict()), wire.CONFIG: ConfigRecord()}
    )
    reply = evaluate_global(message(content, dst=11, message_type="evaluate"), context(NODE, RUN))
    metrics = reply.content.metric_records[wire.METRICS]
    assert metrics[wire.NUM_EXAMPLES] == 120  # 360 test images / 3 clients
    assert 0.0 <= metrics[wire.EVAL_ACCURACY] <= 1.0


def test_out_of_range_partition_id_fails_with_a_clear_reason():
    model = build_model(ModelSpec("mlp"), seed=3)
    with pytest.raises(ConfigError, match=r"partition-id=5 is out of range; allowed: 0..2"):
        train(_train_message(model), context({"partition-id": 5, "num-partitions": 3}, RUN))
