"""Communication graphs and Metropolis-Hastings mixing matrices (fedq.topology)."""

import numpy as np
import pytest

from fedq.errors import ConfigError
from fedq.topology import (
    TOPOLOGIES,
    Topology,
    TopologyError,
    adjacency,
    check_mixing_matrix,
    mixing_matrix,
    parse_topology,
    spectral_gap,
    torus_shape,
)

SIZES = (1, 2, 3, 4, 8, 9, 16, 17)
SPECS = ("ring", "torus", "complete", "random-regular:2", "random-regular:3", "random-regular:4")


def _valid(spec: str, n: int) -> bool:
    topology = parse_topology(spec)
    if topology.degree is None:
        return True
    d = topology.degree
    return d < n and n * d % 2 == 0


def _expected_degree(spec: str, n: int) -> int:
    topology = parse_topology(spec)
    if topology.name == "ring":
        return min(n - 1, 2)
    if topology.name == "complete":
        return n - 1
    if topology.name == "torus":
        rows, cols = torus_shape(n)
        return sum(min(side - 1, 2) for side in (rows, cols))
    return topology.degree


CASES = [(spec, n) for spec in SPECS for n in SIZES if _valid(spec, n)]


def _connected(adj: np.ndarray) -> bool:
    reach = np.eye(len(adj), dtype=bool) | adj
    for _ in range(len(adj)):
        reach = reach | (reach.astype(int) @ adj.astype(int) > 0)
    return bool(reach.all())


@pytest.mark.parametrize(("spec", "n"), CASES)
def test_graph_is_simple_connected_and_of_the_right_degree(spec, n):
    adj = adjacency(parse_topology(spec), n, seed=3)
    assert adj.dtype == bool and adj.shape == (n, n)
    assert np.array_equal(adj, adj.T)
    assert not adj.diagonal().any()
    assert _connected(adj)
    assert set(adj.sum(axis=1).tolist()) == {_expected_degree(spec, n)}


@pytest.mark.parametrize(("spec", "n"), CASES)
def test_mixing_matrix_is_symmetric_doubly_stochastic_and_passes_the_check(spec, n):
    adj = adjacency(parse_topology(spec), n, seed=3)
    w = mixing_matrix(adj)
    assert w.dtype == np.float64
    assert (w >= 0).all()
    assert np.array_equal(w, w.T)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert not (w[~adj & ~np.eye(n, dtype=bool)]).any()
    check_mixing_matrix(w, adj)
    assert 0.0 < spectral_gap(w) <= 1.0 + 1e-12


def test_ring_of_four_weights_are_one_third():
    w = mixing_matrix(adjacency(Topology("ring"), 4))
    expected = np.array([[1, 1, 0, 1], [1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 1, 1]]) / 3
    np.testing.assert_allclose(w, expected, rtol=0, atol=1e-15)


def test_metropolis_hastings_uses_the_larger_degree():
    # A path 0 - 1 - 2: degrees 1, 2, 1, so every edge weighs 1/3.
    adj = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=bool)
    expected = np.array([[2, 1, 0], [1, 1, 1], [0, 1, 2]]) / 3
    np.testing.assert_allclose(mixing_matrix(adj), expected, rtol=0, atol=1e-15)


def test_small_rings_and_tori():
    assert not adjacency(Topology("ring"), 1).any()
    assert adjacency(Topology("ring"), 2).sum() == 2  # one edge, both directions
    assert torus_shape(16) == (4, 4) and torus_shape(8) == (2, 4) and torus_shape(17) == (1, 17)
    assert np.array_equal(adjacency(Topology("torus"), 17), adjacency(Topology("ring"), 17))
    # 3 x 3: agent 4 sits in the middle and talks to 1, 3, 5, 7.
    assert np.flatnonzero(adjacency(Topology("torus"), 9)[4]).tolist() == [1, 3, 5, 7]


def test_regular_graphs_get_uniform_weights():
    w = mixing_matrix(adjacency(Topology("torus"), 16))
    assert set(np.round(w[w > 0], 15).tolist()) == {0.2}


def test_random_regular_is_deterministic_per_seed_and_differs_across_seeds():
    topology = parse_topology("random-regular:3")
    first = adjacency(topology, 16, seed=7)
    assert np.array_equal(first, adjacency(topology, 16, seed=7))
    others = [adjacency(topology, 16, seed=seed) for seed in range(8, 12)]
    assert any(not np.array_equal(first, other) for other in others)


def test_random_regular_two_is_redrawn_until_connected():
    # A random 2-regular graph on 40 nodes is a union of cycles, rarely one cycle.
    for seed in range(5):
        adj = adjacency(parse_topology("random-regular:2"), 40, seed=seed)
        assert _connected(adj)


@pytest.mark.parametrize(
    ("spec", "n", "reason"),
    [
        ("random-regular:3", 9, "n*D even"),
        ("random-regular:3", 3, "D < n"),
        ("random-regular:4", 4, "D < n"),
        ("random-regular:1", 4, "never connected"),
    ],
)
def test_impossible_random_regular_graphs_are_refused(spec, n, reason):
    with pytest.raises(ConfigError, match=reason):
        adjacency(parse_topology(spec), n)


def test_random_regular_one_on_two_agents_is_an_edge():
    assert adjacency(parse_topology("random-regular:1"), 2).sum() == 2


def test_no_agents_is_refused():
    with pytest.raises(TopologyError, match="at least 1 agent"):
        adjacency(Topology("ring"), 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ring", Topology("ring")),
        ("torus", Topology("torus")),
        ("complete", Topology("complete")),
        ("random-regular:3", Topology("random-regular", 3)),
        (" random-regular:1 ", Topology("random-regular", 1)),
    ],
)
def test_parse_topology(text, expected):
    assert parse_topology(text) == expected
    assert parse_topology(expected.describe()) == expected


def test_describe_is_the_canonical_spec():
    assert [parse_topology(name).describe() for name in TOPOLOGIES[:3]] == list(TOPOLOGIES[:3])
    assert Topology("random-regular", 3).describe() == "random-regular:3"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("star", "topology='star' is not known; allowed: ring, torus, complete, random-regular:D"),
        ("random-regular", "topology='random-regular' is not known; allowed:"),
        ("ring:2", "topology='ring:2' is not known; allowed:"),
        ("", "topology='' is not known; allowed:"),
        ("random-regular:0", "topology='random-regular:0': D must be an integer >= 1"),
        ("random-regular:x", "topology='random-regular:x': D must be an integer >= 1"),
        ("random-regular:2.5", "topology='random-regular:2.5': D must be an integer >= 1"),
    ],
)
def test_parse_errors_name_the_value_and_the_allowed_set(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_topology(text)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "degree"), [("star", None), ("ring", 2), ("random-regular", None)]
)
def test_topology_validates_its_fields(name, degree):
    with pytest.raises(ConfigError):
        Topology(name, degree)


def _two_triangles() -> np.ndarray:
    triangle = np.ones((3, 3), dtype=bool) & ~np.eye(3, dtype=bool)
    adj = np.zeros((6, 6), dtype=bool)
    adj[:3, :3] = adj[3:, 3:] = triangle
    return adj


def _ring4() -> np.ndarray:
    return mixing_matrix(adjacency(Topology("ring"), 4))


def _asymmetric_doubly_stochastic() -> np.ndarray:
    # Half stay, half move one step around a directed 3-cycle: rows and columns sum to 1.
    return 0.5 * np.eye(3) + 0.5 * np.roll(np.eye(3), 1, axis=1)


def _row_sum_off() -> np.ndarray:
    w = _ring4()
    w[0, 0] += 0.01
    return w


def _negative() -> np.ndarray:
    w = _ring4()
    w[0, 1] = w[1, 0] = -0.1
    w[0, 0] = w[1, 1] = 1 - (-0.1) - 1 / 3
    return w


def _non_finite() -> np.ndarray:
    w = _ring4()
    w[2, 2] = np.nan
    return w


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_asymmetric_doubly_stochastic, "not symmetric"),
        (_row_sum_off, "rows must sum to 1: row 0"),
        (_negative, "negative entries"),
        (_non_finite, "non-finite"),
        (lambda: mixing_matrix(_two_triangles()), "disconnected: agent 0 reaches 3 of 6"),
        (lambda: np.ones((2, 3)) / 3, "square"),
    ],
)
def test_bad_mixing_matrices_are_refused_with_the_reason(make, reason):
    with pytest.raises(TopologyError, match=reason) as caught:
        check_mixing_matrix(make())
    assert "\n" not in str(caught.value)


def test_column_sums_are_checked():
    w = np.array([[0.5, 0.5], [0.25, 0.75]])  # rows sum to 1, columns to 0.75 and 1.25
    with pytest.raises(TopologyError, match="columns must sum to 1: column 0"):
        check_mixing_matrix(w)


def test_weight_off_the_graph_is_refused():
    w = mixing_matrix(adjacency(Topology("complete"), 4))
    with pytest.raises(TopologyError, match=r"weight 0.25 on \(0, 2\), not an edge"):
        check_mixing_matrix(w, adjacency(Topology("ring"), 4))


def test_bad_adjacency_is_refused():
    with pytest.raises(TopologyError, match="not symmetric"):
        mixing_matrix(np.triu(np.ones((3, 3), dtype=bool), k=1))
    with pytest.raises(TopologyError, match="self-loops"):
        mixing_matrix(np.ones((3, 3), dtype=bool))


def test_identity_on_one_agent_is_fine():
    check_mixing_matrix(np.ones((1, 1)))
    assert spectral_gap(np.ones((1, 1))) == 1.0


def test_spectral_gap():
    for n in (2, 5, 16):
        w = mixing_matrix(adjacency(Topology("complete"), n))
        assert spectral_gap(w) == pytest.approx(1.0, abs=1e-12)
    # Ring of 4 with weights 1/3: eigenvalues 1, 1/3, 1/3, -1/3, so rho = 1/3.
    assert spectral_gap(_ring4()) == pytest.approx(2 / 3, abs=1e-12)
    # Disconnected: a second eigenvalue 1, so no consensus at all.
    assert spectral_gap(mixing_matrix(_two_triangles())) == pytest.approx(0.0, abs=1e-12)
    # Larger rings mix more slowly.
    gaps = [spectral_gap(mixing_matrix(adjacency(Topology("ring"), n))) for n in (4, 8, 16)]
    assert gaps == sorted(gaps, reverse=True)
