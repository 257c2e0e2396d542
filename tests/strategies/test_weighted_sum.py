"""Σ w_n Δ_n in place: the values, the order, the dtypes it accepts."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.weighted_sum import weighted_sum

SHAPES = {"w": (3, 5), "b": (3,)}


def _deltas(count: int, dtype=np.float32) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(4)
    return [
        {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()} for _ in range(count)
    ]


def test_the_sum_is_the_weighted_sum_in_float32() -> None:
    deltas, weights = _deltas(4), [0.5, 2.0, -1.0, 0.25]
    total = weighted_sum(deltas, weights, SHAPES)
    for key, shape in SHAPES.items():
        expected = sum(w * d[key].astype(np.float64) for w, d in zip(weights, deltas, strict=True))
        assert total[key].dtype == np.float32 and total[key].shape == shape
        np.testing.assert_allclose(total[key], expected, rtol=1e-5, atol=1e-6)


def test_read_only_and_narrow_updates_are_summed_without_being_changed() -> None:
    deltas = _deltas(2, np.float16)
    for delta in deltas:
        for array in delta.values():
            array.flags.writeable = False
    before = [{k: v.copy() for k, v in d.items()} for d in deltas]
    total = weighted_sum(deltas, [1.0, 1.0], SHAPES)
    for key in SHAPES:
        np.testing.assert_allclose(
            total[key], before[0][key].astype(np.float32) + before[1][key], rtol=1e-6
        )
        np.testing.assert_array_equal(deltas[0][key], before[0][key])


def test_no_updates_sum_to_zeros_and_a_missing_weight_is_refused() -> None:
    total = weighted_sum([], [], SHAPES)
    assert all(not total[k].any() and total[k].shape == s for k, s in SHAPES.items())
    with pytest.raises(ValueError, match="2 updates but 1 weights"):
        weighted_sum(_deltas(2), [1.0], SHAPES)
