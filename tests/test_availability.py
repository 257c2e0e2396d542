"""Client availability models: parsing, long-run rates, reproducibility."""

import itertools

import numpy as np
import pytest

from fedq.availability import (
    Availability,
    label_correlated_p,
    parse_availability,
    participation_sequence,
    takes_part,
)
from fedq.errors import ConfigError


def _rate(model: Availability, rounds: int = 3000, clients: int = 4) -> float:
    hits = [participation_sequence(model, rounds, seed=1, partition_id=c) for c in range(clients)]
    return float(np.mean(hits))


def test_always_and_bernoulli():
    assert parse_availability("always") == Availability()
    assert _rate(parse_availability("always"), 50) == 1.0
    assert _rate(parse_availability("bernoulli:0.2")) == pytest.approx(0.2, abs=0.02)


def test_markov_keeps_the_long_run_rate_and_is_sticky():
    model = parse_availability("markov:0.1:0.3")
    up, down = model.markov_transitions()
    assert (up, down) == pytest.approx((0.1, 0.1 * (1 / 0.3 - 1)))
    assert _rate(model, rounds=1500) == pytest.approx(0.3, abs=0.04)
    states = participation_sequence(model, 400, seed=2, partition_id=0)
    assert states[-1] == takes_part(model, 400, seed=2, partition_id=0)
    switches = sum(a != b for a, b in itertools.pairwise(states))
    assert switches < 0.5 * 2 * 0.3 * 0.7 * 400  # far stickier than independent draws


def test_markov_caps_the_leaving_probability_and_rescales():
    # q (1/p - 1) = 0.9 * 9 = 8.1 > 1: both are divided by 8.1.
    up, down = parse_availability("markov:0.9:0.1").markov_transitions()
    assert down == 1.0 and up == pytest.approx(0.9 / 8.1)
    assert up / (up + down) == pytest.approx(0.1)  # the long-run rate is kept


def test_cyclic_is_active_a_fixed_share_of_each_cycle():
    model = parse_availability("cyclic:10:0.3")
    pattern = [takes_part(model, t, seed=3, partition_id=5) for t in range(1, 31)]
    assert sum(pattern) == 9  # 3 active rounds in every 10
    assert pattern[:10] == pattern[10:20] == pattern[20:]


def test_draws_are_reproducible_and_differ_between_clients():
    model = parse_availability("bernoulli:0.5")
    a = [takes_part(model, t, seed=7, partition_id=0) for t in range(1, 100)]
    assert a == [takes_part(model, t, seed=7, partition_id=0) for t in range(1, 100)]
    assert a != [takes_part(model, t, seed=7, partition_id=1) for t in range(1, 100)]


def test_label_correlated_rates_average_about_the_target():
    rng = np.random.default_rng(0)
    rates = []
    for client in range(200):
        labels = rng.choice(10, size=100, p=rng.dirichlet(np.full(10, 0.1)))
        raw = label_correlated_p(labels, 10, run_seed=client)
        rates.append(parse_availability("bernoulli:label", label_p=raw).p)
    assert 0.06 < np.mean(rates) < 0.2  # the paper's mean is about 0.1
    assert min(rates) >= 0.02
    model = parse_availability("markov:0.2:label:0.3", label_p=2.0)
    assert model.p == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sometimes", r"availability='sometimes' is not known; allowed: always, bernoulli:P"),
        ("bernoulli:1.5", r"P=1.5 must be in \(0, 1\]"),
        ("bernoulli", r"expected 1 parameter"),
        ("markov:0:0.5", r"Q must be in \(0, 1\]"),
        ("cyclic:0:0.5", r"L must be >= 1 round"),
        ("always:1", r"expected 0 parameter"),
        ("bernoulli:label", r"label-correlated P needs the client's labels"),
    ],
)
def test_bad_specs_are_refused_clearly(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_availability(text)


def _replayed_markov(model: Availability, rounds: int, seed: int, partition_id: int) -> list[bool]:
    """The chain replayed from its start with the same seeded draws, nothing kept."""
    up, down = model.markov_transitions()
    draw = np.random.default_rng([seed, partition_id, 0, 0xA7A1]).random()
    active, states = bool(draw < model.p), []
    for t in range(1, rounds + 1):
        draw = np.random.default_rng([seed, partition_id, t, 0xA7A1]).random()
        active = draw >= down if active else draw < up
        states.append(active)
    return states


def test_a_markov_chain_continued_in_any_order_is_the_chain_replayed_from_its_start(
    monkeypatch,
):
    from fedq import availability

    monkeypatch.setattr(availability, "_MARKOV_CHAINS", {})
    model = parse_availability("markov:0.05:0.1")
    expected = _replayed_markov(model, 300, seed=4, partition_id=2)
    asked = [300, 7, 150, 151, 1, 299]  # out of order: later rounds first, then earlier ones
    assert [takes_part(model, t, 4, 2) for t in asked] == [expected[t - 1] for t in asked]
    assert participation_sequence(model, 120, 4, 2) == expected[:120]
    assert participation_sequence(model, 300, 4, 2) == expected
