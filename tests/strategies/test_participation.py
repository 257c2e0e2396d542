"""FedAU's participation estimator against hand-computed sequences."""

import pytest

from strategies.fedau import ParticipationEstimator

ALL = {"a", "b", "c"}


def test_first_participation_gets_weight_one_then_intervals_are_averaged():
    est = ParticipationEstimator()
    # Round 1: a takes part (no history: 1.0); b, c absent (gap 1).
    assert est.step({"a"}, ALL) == {"a": 1.0}
    # Round 2: b takes part, first time: 1.0; its interval gap+1 = 2 is recorded after.
    assert est.step({"b"}, ALL) == {"b": 1.0}
    # Round 3: a again: its recorded interval is 1 (round 1); gap was 1 -> records 2.
    assert est.step({"a", "b"}, ALL) == {"a": 1.0, "b": 2.0}
    # a's intervals: 1, 2 -> mean 1.5; b's intervals: 2, 1 -> 1.5; c never took part.
    assert est.step({"a", "b", "c"}, ALL) == {"a": 1.5, "b": 1.5, "c": 1.0}
    assert est.clients["c"].interval_mean == 4.0  # c waited 3 rounds, took part in round 4


def test_bernoulli_client_weight_estimates_one_over_p():
    import numpy as np

    rng = np.random.default_rng(0)
    est = ParticipationEstimator()
    for _ in range(4000):
        participants = {"rare"} if rng.random() < 0.2 else set()
        est.step(participants | {"always"}, {"rare", "always"})
    weights = est.weights()
    assert weights["always"] == 1.0
    assert weights["rare"] == pytest.approx(5.0, rel=0.1)


def test_cutoff_records_k_and_restarts_the_gap():
    est = ParticipationEstimator(cutoff=3)
    for _ in range(7):  # absent 7 rounds: K recorded at rounds 3 and 6, gap 1 after
        est.step(set(), {"x"})
    history = est.clients["x"]
    assert (history.gap, history.interval_count, history.interval_mean) == (1, 2, 3.0)
    assert est.step({"x"}, {"x"}) == {"x": 3.0}
    # Then interval gap+1 = 2 is recorded: mean of (3, 3, 2).
    assert est.clients["x"].interval_mean == pytest.approx(8 / 3)


def test_client_appearing_late_starts_without_history():
    est = ParticipationEstimator()
    for _ in range(5):
        est.step({"a"}, {"a"})
    assert est.step({"a", "late"}, {"a", "late"}) == {"a": 1.0, "late": 1.0}
    assert est.clients["late"].interval_mean == 1.0


def test_state_round_trips_and_stays_small():
    est = ParticipationEstimator(cutoff=50)
    est.step({"a"}, ALL)
    est.step({"b"}, ALL)
    copy = ParticipationEstimator(cutoff=50)
    copy.load_state(est.state())
    assert copy.step({"a", "c"}, ALL) == est.step({"a", "c"}, ALL)
    assert copy.clients == est.clients


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="cutoff=0 must be a positive number of rounds"):
        ParticipationEstimator(cutoff=0)
    with pytest.raises(ValueError, match=r"participants \['z'\] are not in `known`"):
        ParticipationEstimator().step({"z"}, {"a"})
