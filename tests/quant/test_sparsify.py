"""Top-k and rand-k position selection: exact top-k, uniform random subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quant import sparsify
from quant.sparsify import random_positions, top_k_positions


def _reference_top_k(x: np.ndarray, k: int) -> np.ndarray:
    return np.sort(np.argsort(-np.abs(x), kind="stable")[:k])


@pytest.mark.parametrize(
    ("n", "k"),
    [(1, 1), (10, 3), (1000, 999), (300_000, 1), (300_000, 3_000), (1_000_003, 10_001)],
)
def test_top_k_is_exact(n: int, k: int) -> None:
    x = np.random.default_rng(n + k).standard_normal(n).astype(np.float32)
    np.testing.assert_array_equal(
        top_k_positions(torch.from_numpy(x), k).numpy(), _reference_top_k(x, k)
    )


def test_top_k_falls_back_to_an_exact_selection_when_the_estimate_misses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x = np.random.default_rng(1).standard_normal(400_000).astype(np.float32)
    monkeypatch.setattr(sparsify, "_MARGIN_SIGMAS", -50.0)  # threshold far too high
    np.testing.assert_array_equal(
        top_k_positions(torch.from_numpy(x), 4_000).numpy(), _reference_top_k(x, 4_000)
    )


def test_top_k_with_ties_keeps_k_of_the_largest() -> None:
    x = np.zeros(400_000, dtype=np.float32)
    x[::3] = 2.0
    x[1::3] = -2.0
    x[5::997] = 3.0  # strictly larger: always kept
    chosen = top_k_positions(torch.from_numpy(x), 1_000).numpy()
    assert chosen.size == 1_000 and np.unique(chosen).size == 1_000
    assert np.all(np.abs(x[chosen]) >= 2.0) and np.isin(np.flatnonzero(x == 3.0), chosen).all()
    # The ties at the k-th magnitude go to the first positions (a stable sort's choice).
    np.testing.assert_array_equal(chosen, _reference_top_k(x, 1_000))


@pytest.mark.parametrize(("n", "k"), [(10, 1), (10, 9), (1000, 500), (1000, 501), (10**6, 10**4)])
def test_random_positions_are_a_sorted_subset_of_the_right_size(n: int, k: int) -> None:
    chosen = random_positions(n, k, torch.Generator().manual_seed(0)).numpy()
    assert chosen.dtype == np.int64 and chosen.size == k
    assert np.all(np.diff(chosen) > 0) and chosen[0] >= 0 and chosen[-1] < n
    again = random_positions(n, k, torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_array_equal(chosen, again)


@pytest.mark.parametrize("k", [3, 14])  # below and above half of the 20 positions
def test_random_positions_are_uniform(k: int) -> None:
    n, trials = 20, 4000
    generator = torch.Generator().manual_seed(1)
    counts = np.zeros(n)
    for _ in range(trials):
        counts[random_positions(n, k, generator).numpy()] += 1
    expected = trials * k / n
    # Each count is binomial(trials, k / n): 5 standard deviations of slack.
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected * (1 - k / n)))
