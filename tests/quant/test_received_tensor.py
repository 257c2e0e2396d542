"""Reading a payload without decoding it: the same checks, the same arrays, the same sums."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from quant import Codec
from quant import block_payload as bp
from quant.block_payload import BlockLayout
from quant.received_tensor import BlockTensor, DenseTensor, ReceivedTensor, SparseTensor

# A long 1-D array (pieces cut inside its one row), a matrix whose rows end in a ragged
# block, a conv-like 4-D array, a scalar and an empty array.
SHAPES = [(70_001,), (130, 333), (6, 4, 3, 3), (), (0,)]
CODECS = {
    "int4": BlockTensor,
    "int8": BlockTensor,
    "mxfp4_e2m1": BlockTensor,
    "mxint8": BlockTensor,
    "int4:block=0": BlockTensor,  # one scale for the whole tensor
    "fp8_e4m3": DenseTensor,  # codes that may be NaN: decoded when read
    "bf16": DenseTensor,
    "topk:0.02+int8": SparseTensor,
    "topk:0.05+int4+ans": SparseTensor,
}


@pytest.fixture(autouse=True)
def _small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces of a few thousand values, so that every array here is cut into several."""
    monkeypatch.setattr(bp, "ADD_PIECE_VALUES", 4096)
    monkeypatch.setattr(bp, "PIECE_VALUES", 4096)


def _add(tensor: ReceivedTensor, total: torch.Tensor, weight: float) -> None:
    """``total += weight * tensor``, span by span as the server's sum adds it."""
    layout = tensor.layout or BlockLayout(1, tensor.numel, 1)
    scratch = torch.empty(max(tensor.numel, 1))
    for start, end in layout.spans(bp.ADD_PIECE_VALUES):
        tensor.add_span(total.view(-1), weight, start, end, scratch)


def _arrays(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.01 * rng.standard_normal(shape)).astype(np.float32) for shape in SHAPES]


@pytest.mark.parametrize("spec", CODECS)
def test_read_gives_what_decode_gives_and_adds_it_weighted(spec: str) -> None:
    codec = Codec.from_spec(spec)
    payload = codec.encode(_arrays())
    tensors, decoded = codec.read(payload), codec.decode(payload)
    assert [type(t) for t in tensors[:3]] == [CODECS[spec]] * 3
    for tensor, array in zip(tensors, decoded, strict=True):
        assert tensor.shape == array.shape and tensor.dtype == array.dtype.name
        np.testing.assert_array_equal(tensor.numpy(), array)
        start = torch.from_numpy(np.linspace(-1, 1, array.size, dtype=np.float32))
        total = start.clone().reshape(array.shape)
        _add(tensor, total, -0.37)
        expected = start.numpy() + np.float32(-0.37) * array.reshape(-1)
        # Block-scaled codes are added as code * (weight * scale): one rounding apart.
        np.testing.assert_allclose(total.numpy().reshape(-1), expected, rtol=2e-6, atol=1e-9)


def test_dense_and_sparse_sums_are_torch_adds_value_for_value() -> None:
    for spec in ("bf16", "topk:0.02+int8"):
        codec = Codec.from_spec(spec)
        payload = codec.encode(_arrays(1))
        for tensor, array in zip(codec.read(payload), codec.decode(payload), strict=True):
            total = torch.full(array.shape, 0.5)
            _add(tensor, total, 0.3)
            expected = torch.full(array.shape, 0.5).add_(torch.from_numpy(array), alpha=0.3)
            assert torch.equal(total, expected)


def test_a_float16_update_is_added_as_its_decoded_float16_values() -> None:
    codec = Codec.from_spec("int8")
    array = np.array([[1e-3, 60_000.0, -65_000.0, 3.0]], dtype=np.float16)
    payload = codec.encode([array])
    (tensor,) = codec.read(payload)
    decoded = codec.decode(payload)[0]
    assert decoded.dtype == np.float16
    total = torch.zeros(1, 4)
    _add(tensor, total, 1.0)
    np.testing.assert_array_equal(total.numpy(), decoded.astype(np.float32))


def test_every_piece_is_its_span_and_other_layouts_spans_are_refused() -> None:
    for layout in (
        BlockLayout(130, 333, 32),
        BlockLayout(1, 70_001, 64),
        BlockLayout(6, 36, 32),
        BlockLayout(3, 5, 0),
    ):
        pieces = list(layout.pieces(4096))
        spans = layout.spans(4096)
        assert spans[0][0] == 0 and spans[-1][1] == layout.rows * layout.cols
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        assert [layout.piece(*span) for span in spans] == pieces
    with pytest.raises(ValueError, match="not a piece"):
        BlockLayout(1, 70_001, 64).piece(100, 5000)  # starts inside a block
    with pytest.raises(ValueError, match="not a piece"):
        BlockLayout(130, 333, 32).piece(0, 400)  # a row and a bit
