"""Reading a reply's Flower Arrays in place, as numpy's own reading would."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array

from strategies.replies import array_view

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
