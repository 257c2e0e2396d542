"""FedAU aggregation against hand-computed numbers, for every mode, on synthetic updates."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, MetricRecord, RecordDict

from fedq import wire
from strategies.fedau import FedAU
from tests.flower_messages import message, reply

GLOBAL = {"w": np.array([1.0, 2.0], np.float32), "b": np.array([0.5], np.float32)}


def _client_reply(node, client, local=None, p=0.5, participated=True):
    record = ConfigRecord({wire.CLIENT_ID: client, wire.AVAILABILITY_P: p})
    record[wire.PARTICIPATED] = participated
    content = RecordDict({wire.CLIENT: record})
    if participated:
        content[wire.ARRAYS] = ArrayRecord(
            {k: Array(np.asarray(v, np.float32)) for k, v in local.items()}
        )
        content[wire.METRICS] = MetricRecord({wire.NUM_EXAMPLES: 10, wire.TRAIN_LOSS: 1.0})
    return reply(message(RecordDict(), dst=node), content)


def _strategy(mode, server_lr=1.0):
    strategy = FedAU(mode=mode, server_lr=server_lr, min_available_nodes=1, min_train_nodes=1)
    strategy._global = ArrayRecord(
        {k: Array(v) for k, v in GLOBAL.items()}
    )  # what configure_train would remember
    return strategy


def _local(shift):
    return {k: v + shift for k, v in GLOBAL.items()}


def _round(strategy, server_round, replies):
    arrays, _ = strategy.aggregate_train(server_round, replies)
    if arrays is not None:
        strategy._global = arrays
    return arrays


@pytest.mark.parametrize(
    ("mode", "expected_shift"),
    [
        # Round 3: A (Δ=+1) and B (Δ=+3) take part, C is known but absent: N = 3.
        # Recorded intervals before round 3: A [1], B [2], so FedAU weighs (1, 2).
        ("fedau", (1 * 1 + 2 * 3) / 3),
        ("participants", (1 + 3) / 2),
        ("all", (1 + 3) / 3),
        # Oracle weights 1/p with p_A = 0.5, p_B = 0.25.
        ("known-prob", (2 * 1 + 4 * 3) / 3),
    ],
)
def test_each_mode_against_hand_computed_numbers(mode, expected_shift):
    strategy = _strategy(mode)
    # Round 1: A takes part (Δ = 0); B and C sit out, which makes them known.
    _round(
        strategy,
        1,
        [
            _client_reply(2, "A", _local(0.0), p=0.5),
            _client_reply(3, "B", p=0.25, participated=False),
            _client_reply(4, "C", p=0.5, participated=False),
        ],
    )
    # Round 2: only B takes part (Δ = 0); its first participation records interval 2.
    _round(strategy, 2, [_client_reply(3, "B", _local(0.0), p=0.25)])
    before = {k: v.numpy().copy() for k, v in strategy._global.items()}
    arrays = _round(
        strategy,
        3,
        [_client_reply(2, "A", _local(1.0), p=0.5), _client_reply(3, "B", _local(3.0), p=0.25)],
    )
    for key, value in arrays.items():
        np.testing.assert_allclose(value.numpy(), before[key] + expected_shift, rtol=1e-6)
    outcome = strategy.last_outcome
    assert outcome.participants == ["A", "B"] and outcome.absent == ["C"]
    assert outcome.weights["B"] == {"fedau": 2.0, "known-prob": 4.0}.get(mode, 1.0)


def test_server_learning_rate_scales_the_step():
    strategy = _strategy("all", server_lr=0.5)
    arrays = _round(strategy, 1, [_client_reply(2, "A", _local(2.0))])
    np.testing.assert_allclose(arrays["w"].numpy(), GLOBAL["w"] + 0.5 * 2.0)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"w": np.array([1.0, np.nan]), "b": np.array([0.5])}, "w: holds NaN or Inf"),
        (
            {"w": np.array([1.0, 2.0, 3.0]), "b": np.array([0.5])},
            "w: shape (3,) != global shape (2,)",
        ),
        ({"w": np.array([1.0, 2.0])}, "array keys differ (missing ['b'], extra [])"),
    ],
)
def test_a_bad_update_is_rejected_with_a_reason_and_the_round_goes_on(bad, reason):
    strategy = _strategy("participants")
    arrays = _round(strategy, 1, [_client_reply(2, "A", _local(1.0)), _client_reply(3, "B", bad)])
    np.testing.assert_allclose(arrays["w"].numpy(), GLOBAL["w"] + 1.0)  # A alone
    assert strategy.last_outcome.rejected == [{"client": "B", "node": "3", "reason": reason}]
    assert strategy.last_outcome.participants == ["A"]


def test_error_replies_and_no_participants_leave_the_model_unchanged():
    strategy = _strategy("fedau")
    failed = reply(message(RecordDict(), dst=2), error=Error(code=1, reason="timeout"))
    assert strategy.aggregate_train(1, [failed, _client_reply(3, "B", participated=False)]) == (
        None,
        None,
    )
    assert strategy.last_outcome.absent == ["B"]


def test_a_reconnecting_client_keeps_its_history():
    strategy = _strategy("fedau")
    _round(
        strategy, 1, [_client_reply(2, "A", _local(0.0)), _client_reply(3, "B", participated=False)]
    )
    _round(strategy, 2, [_client_reply(3, "B", participated=False)])
    # B's SuperNode restarted: new node id 9, same client-id. Its gap of 2 carries over.
    _round(strategy, 3, [_client_reply(9, "B", _local(0.0))])
    assert strategy.estimator.clients["B"].interval_mean == 3.0
    assert set(strategy.estimator.clients) == {"A", "B"}


def test_unknown_mode_is_refused():
    with pytest.raises(
        ValueError, match="mode='median' is not known; allowed: fedau, participants"
    ):
        FedAU(mode="median")
