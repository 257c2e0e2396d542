"""Reading a reply's Flower Arrays in place, as numpy's own reading would."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array

from strategies.replies import _all_finite, array_view

CASES = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    np.array(2.5, dtype=np.float32),
    np.zeros((0, 5), np.float16),
    np.arange(7, dtype=">i4"),
]


@pytest.mark.parametrize("values", CASES, ids=lambda a: f"{a.dtype}{a.shape}")
def test_the_view_equals_numpys_reading_without_a_copy(values: np.ndarray) -> None:
    array = Array(values)
    view = array_view(array)
    expected = array.numpy()
    assert view.dtype == expected.dtype and view.shape == expected.shape
    np.testing.assert_array_equal(view, expected)
    assert not view.flags.writeable  # the reply's own bytes, read in place


def test_a_truncated_array_and_an_object_array_are_refused() -> None:
    array = Array(np.arange(100, dtype=np.float32))
    array.data = array.data[:-8]
    with pytest.raises(ValueError):
        array_view(array)
    objects = Array(np.arange(3, dtype=np.float32))
    objects.data = objects.data.replace(b"'<f4'", b"'|O' ")
    with pytest.raises(ValueError, match="object arrays"):
        array_view(objects)


def test_headers_are_parsed_once_and_an_oversized_header_is_refused() -> None:
    first, second = Array(np.ones((3, 4), np.float32)), Array(np.zeros((3, 4), np.float32))
    np.testing.assert_array_equal(array_view(first), np.ones((3, 4)))
    np.testing.assert_array_equal(array_view(second), np.zeros((3, 4)))  # same header
    other = Array(np.arange(5, dtype=np.float64))
    np.testing.assert_array_equal(array_view(other), np.arange(5))
    huge = Array(np.arange(3, dtype=np.float32))
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }" + b" " * 20_000
    huge.data = b"\x93NUMPY\x02\x00" + (len(header) + 1).to_bytes(4, "little") + header + b"\n"
    with pytest.raises(ValueError, match="header of"):
        array_view(huge)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.longdouble])
def test_all_finite_finds_one_bad_value_and_survives_an_overflowing_sum(dtype) -> None:
    largest = np.finfo(dtype).max
    big = np.full(1001, largest / 2, dtype)  # finite values whose sum overflows
    assert _all_finite(big)
    assert _all_finite(np.frombuffer(big.tobytes(), dtype))  # a read-only view, as received
    assert _all_finite(np.ones((6, 8), dtype)[:, ::3])  # strided
    for bad in (np.nan, np.inf, -np.inf):
        values = np.linspace(-1, 1, 1001).astype(dtype)
        values[517] = bad
        assert not _all_finite(values), bad
        assert not _all_finite(np.frombuffer(values.tobytes(), dtype)), bad


def test_all_finite_of_integer_arrays() -> None:
    assert _all_finite(np.arange(10, dtype=np.int64))
    assert _all_finite(np.full(10, np.iinfo(np.int32).max, np.int32))
