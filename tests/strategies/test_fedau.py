"""FedAU aggregation against hand-computed numbers, for every mode, on synthetic updates."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, MetricRecord, RecordDict

from fedq import wire
from strategies.fedau import WEIGHT_FIGURE, FedAU
from strategies.link import Link
from strategies.replies import Rejection
from tests.flower_messages import NodesGrid, message, reply

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


class _Run:
    """FedAU behind the Link, as the ServerApp runs it, with the global model it holds."""

    def __init__(self, mode, server_lr=1.0):
        self.fedau = FedAU(mode=mode, server_lr=server_lr, min_available_nodes=1, min_train_nodes=1)
        self.link = Link(self.fedau)
        self.arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})

    def round(self, server_round, replies):
        """Send the model to the replying nodes, then aggregate their replies."""
        nodes = NodesGrid([r.metadata.src_node_id for r in replies])
        list(self.link.configure_train(server_round, self.arrays, ConfigRecord(), nodes))
        arrays, _ = self.link.aggregate_train(server_round, replies)
        if arrays is not None:
            self.arrays = arrays
        return arrays

    @property
    def outcome(self):
        return self.link.round_outcome


def _local(shift):
    return {k: v + shift for k, v in GLOBAL.items()}


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
    run = _Run(mode)
    # Round 1: A takes part (Δ = 0); B and C sit out, which makes them known.
    run.round(
        1,
        [
            _client_reply(2, "A", _local(0.0), p=0.5),
            _client_reply(3, "B", p=0.25, participated=False),
            _client_reply(4, "C", p=0.5, participated=False),
        ],
    )
    # Round 2: only B takes part (Δ = 0); its first participation records interval 2.
    run.round(2, [_client_reply(3, "B", _local(0.0), p=0.25)])
    before = {k: v.numpy().copy() for k, v in run.arrays.items()}
    arrays = run.round(
        3,
        [_client_reply(2, "A", _local(1.0), p=0.5), _client_reply(3, "B", _local(3.0), p=0.25)],
    )
    for key, value in arrays.items():
        np.testing.assert_allclose(value.numpy(), before[key] + expected_shift, rtol=1e-6)
    outcome = run.outcome
    assert outcome.participants == ["A", "B"] and outcome.absent == ["C"]
    weight = outcome.client_figures["B"][WEIGHT_FIGURE]
    assert weight == {"fedau": 2.0, "known-prob": 4.0}.get(mode, 1.0)


def test_server_learning_rate_scales_the_step():
    run = _Run("all", server_lr=0.5)
    arrays = run.round(1, [_client_reply(2, "A", _local(2.0))])
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
    run = _Run("participants")
    arrays = run.round(1, [_client_reply(2, "A", _local(1.0)), _client_reply(3, "B", bad)])
    np.testing.assert_allclose(arrays["w"].numpy(), GLOBAL["w"] + 1.0)  # A alone
    assert run.outcome.rejected == [Rejection("B", 3, reason)]
    assert run.outcome.participants == ["A"]


def test_error_replies_and_no_participants_leave_the_model_unchanged():
    run = _Run("fedau")
    failed = reply(message(RecordDict(), dst=2), error=Error(code=1, reason="timeout"))
    assert run.round(1, [failed, _client_reply(3, "B", participated=False)]) is None
    assert run.outcome.absent == ["B"]


def test_a_reconnecting_client_keeps_its_history():
    run = _Run("fedau")
    run.round(1, [_client_reply(2, "A", _local(0.0)), _client_reply(3, "B", participated=False)])
    run.round(2, [_client_reply(3, "B", participated=False)])
    # B's SuperNode restarted: new node id 9, same client-id. Its gap of 2 carries over.
    run.round(3, [_client_reply(9, "B", _local(0.0))])
    assert run.fedau.estimator.clients["B"].interval_mean == 3.0
    assert set(run.fedau.estimator.clients) == {"A", "B"}


def test_without_the_link_fedau_reads_whole_models_with_the_same_checks():
    fedau = FedAU(mode="participants", min_available_nodes=1, min_train_nodes=1)
    start = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    list(fedau.configure_train(1, start, ConfigRecord(), NodesGrid([2, 3])))
    bad = {"w": np.array([1.0, np.nan]), "b": np.array([0.5])}
    arrays, metrics = fedau.aggregate_train(
        1, [_client_reply(2, "A", _local(1.0)), _client_reply(3, "B", bad)]
    )
    np.testing.assert_allclose(arrays["w"].numpy(), GLOBAL["w"] + 1.0)
    assert metrics["participants"] == 1


def test_state_round_trips_and_restores_the_estimator():
    run = _Run("fedau")
    run.round(1, [_client_reply(2, "A", _local(0.0)), _client_reply(3, "B", participated=False)])
    run.round(2, [_client_reply(3, "B", _local(0.0))])
    restored = _Run("fedau")
    restored.link.load_state(run.link.state())
    assert restored.fedau.estimator.clients == run.fedau.estimator.clients
    assert restored.fedau.known == {"A", "B"}
    assert restored.link.reader.client_of_node == {2: "A", 3: "B"}
    with pytest.raises(ValueError, match="checkpoint of fedau-mode='fedau', not 'all'"):
        _Run("all").fedau.load_state(run.fedau.state())


def test_unknown_mode_is_refused():
    with pytest.raises(
        ValueError, match="mode='median' is not known; allowed: fedau, participants"
    ):
        FedAU(mode="median")


class _KnownN(_Run):
    def __init__(self, mode, num_clients):
        super().__init__(mode)
        self.fedau = FedAU(
            mode=mode, num_clients=num_clients, min_available_nodes=1, min_train_nodes=1
        )
        self.link = Link(self.fedau)


@pytest.mark.parametrize(
    ("mode", "expected_shift"),
    [
        # Round 1, A (Δ = +2, no interval yet: ω = 1) is the only client heard from; N = 4.
        ("fedau", 2 / 4),
        ("all", 2 / 4),
        ("known-prob", (2 / 0.5) / 4),
        ("participants", 2 / 1),  # N does not enter
    ],
)
def test_a_known_total_number_of_clients_is_the_divisor(mode, expected_shift):
    run = _KnownN(mode, num_clients=4)
    arrays = run.round(1, [_client_reply(2, "A", _local(2.0), p=0.5)])
    np.testing.assert_allclose(arrays["w"].numpy(), GLOBAL["w"] + expected_shift, rtol=1e-6)
    assert run.fedau.population() == 4 and run.fedau.known == {"A"}


def test_more_clients_than_the_known_total_grow_n_with_one_warning(caplog):
    run = _KnownN("all", num_clients=2)
    replies = [_client_reply(2, "A", _local(3.0)), _client_reply(3, "B", participated=False)]
    replies.append(_client_reply(4, "C", participated=False))
    with caplog.at_level("WARNING", logger="strategies.fedau"):
        arrays = run.round(1, replies)
        run.round(2, [_client_reply(2, "A", _local(0.0))])
    np.testing.assert_allclose(arrays["w"].numpy(), GLOBAL["w"] + 3.0 / 3, rtol=1e-6)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "FedAU: 3 distinct clients have replied, more than fedau-num-clients=2; "
        "N is now the number of clients heard from"
    ]


def test_a_known_total_below_one_is_refused():
    with pytest.raises(ValueError, match=r"num_clients=0 must be >= 1 \(all clients\), or None"):
        FedAU(num_clients=0)


def test_a_rejected_update_counts_as_an_absence_for_the_estimator():
    run = _Run("fedau")
    run.round(1, [_client_reply(2, "A", _local(0.0)), _client_reply(3, "B", _local(0.0))])
    bad = {"w": np.array([1.0, np.nan]), "b": np.array([0.5])}
    run.round(2, [_client_reply(2, "A", bad), _client_reply(3, "B", _local(0.0))])
    assert [r.client for r in run.outcome.rejected] == ["A"]
    assert run.fedau.estimator.history("A").gap == 1  # as if A had sat round 2 out
    run.round(3, [_client_reply(2, "A", _local(0.0))])
    # A's intervals: 1 (round 1), then 2 (rounds 2-3: the rejected round is not a participation).
    assert run.fedau.estimator.history("A").interval_mean == 1.5
    assert run.fedau.estimator.history("B").interval_mean == 1.0


def test_a_reply_that_cannot_say_who_sent_it_is_no_client():
    run = _Run("fedau")
    nameless = _client_reply(4, "", _local(1.0))  # client-id "" is refused before use
    run.round(1, [_client_reply(2, "A", _local(0.0)), nameless])
    assert [(r.client, r.identified) for r in run.outcome.rejected] == [("node-4", False)]
    assert len(run.fedau.estimator) == 1  # A only: N does not grow with stand-in ids
    assert run.fedau.population() == 1
