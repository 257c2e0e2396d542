"""Σ w_n Δ_n in place: the values, the order, the dtypes it accepts."""

from __future__ import annotations

import numpy as np
import pytest

import strategies.weighted_sum as weighted_sum_module
from quant import Codec, block_payload
from strategies.replies import EncodedDelta, ModelDelta, _decoded_delta
from strategies.weighted_sum import AddsInto, weighted_sum

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


# --- updates that add themselves, span by span --------------------------------------------

MODEL = {"w": (300, 70), "b": (5_003,), "s": ()}


def _encoded(spec: str, count: int) -> list[EncodedDelta]:
    codec, rng = Codec.from_spec(spec), np.random.default_rng(9)
    reference = {k: np.zeros(s, np.float32) for k, s in MODEL.items()}
    deltas = []
    for _ in range(count):
        arrays = [(0.01 * rng.standard_normal(s)).astype(np.float32) for s in MODEL.values()]
        deltas.append(_decoded_delta(codec.encode(arrays), codec, reference))
    return deltas


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spans of about 2,000 values: every array is summed in several."""
    monkeypatch.setattr(block_payload, "ADD_PIECE_VALUES", 2048)
    monkeypatch.setattr(weighted_sum_module, "ADD_PIECE_VALUES", 2048)


@pytest.mark.parametrize("spec", ["int4", "int8", "mxfp4_e2m1", "topk:0.05+int8", "bf16"])
def test_encoded_updates_sum_from_their_codes_as_their_decoded_arrays(
    spec: str, small_pieces: None
) -> None:
    deltas, weights = _encoded(spec, 5), [0.1, 0.3, -0.2, 0.25, 0.55]
    total = weighted_sum(deltas, weights, MODEL)
    decoded = [{k: d[k] for k in MODEL} for d in deltas]  # plain arrays: decoded, summed
    expected = weighted_sum(decoded, weights, MODEL)
    again = weighted_sum(deltas, weights, MODEL)
    for key in MODEL:
        assert isinstance(deltas[0], AddsInto)
        np.testing.assert_array_equal(total[key], again[key])  # the same bits every time
        if spec in ("topk:0.05+int8", "bf16"):  # torch's add_ value for value
            np.testing.assert_array_equal(total[key], expected[key])
        else:  # code * (weight * scale): a rounding per term (~0.01), however they cancel
            np.testing.assert_allclose(total[key], expected[key], rtol=1e-5, atol=2e-8)


def test_whole_model_updates_sum_span_by_span_to_the_same_bits(small_pieces: None) -> None:
    rng = np.random.default_rng(2)
    reference = {k: rng.standard_normal(s).astype(np.float32) for k, s in MODEL.items()}
    fortran = np.asfortranarray(reference["w"] + 1)  # read as it arrived: any order
    noise = {k: rng.standard_normal(x.shape).astype(np.float32) for k, x in reference.items()}
    locals_ = [{k: x + noise[k] for k, x in reference.items()}]
    locals_.append({**locals_[0], "w": fortran})
    deltas = [ModelDelta(local, reference) for local in locals_]
    weights = [0.7, 0.3]
    total = weighted_sum(deltas, weights, MODEL)
    expected = weighted_sum([{k: d[k] for k in MODEL} for d in deltas], weights, MODEL)
    for key in MODEL:
        np.testing.assert_array_equal(total[key], expected[key])


def test_updates_of_both_kinds_in_one_round_are_summed_in_order(small_pieces: None) -> None:
    encoded = _encoded("int8", 2)
    plain = {k: np.full(s, 0.5, np.float32) for k, s in MODEL.items()}
    total = weighted_sum([encoded[0], plain, encoded[1]], [1.0, 2.0, 1.0], MODEL)
    for key in MODEL:
        expected = encoded[0][key] + np.float32(1.0) + encoded[1][key]
        np.testing.assert_allclose(total[key], expected, rtol=1e-6, atol=1e-9)
