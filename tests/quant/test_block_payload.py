"""Block payloads in cache-sized pieces: the same scales and codes as one whole-tensor pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quant import block_payload, parallel
from quant.bitpack import pack_codes, packed_size
from quant.block_payload import BlockLayout, decode_blocks, encode_blocks
from quant.constants import REGISTRY
from quant.element_codes import code_bits, to_codes
from quant.errors import PayloadError
from quant.formats import block_quantize, fake_quantize

LAYOUTS = [
    (1, 1000, 32),
    (1, 1001, 17),
    (40, 45, 32),
    (40, 45, 0),
    (9, 136, 64),  # rows longer than a piece: split in whole blocks
    (9, 131, 16),  # ... unless a row is no multiple of 8 codes: whole rows
    (33, 7, 4),
    (5, 1, 32),
]


@pytest.mark.parametrize(("rows", "cols", "block"), LAYOUTS)
def test_pieces_cover_every_value_once_at_aligned_offsets(
    rows: int, cols: int, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(block_payload, "PIECE_VALUES", 100)
    layout = BlockLayout(rows, cols, block)
    seen = np.zeros((rows, cols), dtype=np.int64)
    pieces = list(layout.pieces())
    for piece in pieces:
        seen[piece.row : piece.row_end, piece.col : piece.col_end] += 1
        assert layout.code_offset(piece) % 8 == 0
        if block:
            assert piece.col % block == 0
    assert (seen == 1).all()
    offsets = [layout.code_offset(p) for p in pieces]
    assert offsets == sorted(offsets)


@pytest.mark.parametrize(("rows", "cols", "block"), LAYOUTS)
@pytest.mark.parametrize(
    ("fmt", "rounding", "scale"),
    [
        ("int8", "nearest_even", "e8m0"),
        ("int4", "stochastic", "e8m0"),
        ("mxfp6_e3m2", "nearest_even", "ue5m3"),
        ("mxfp4_e2m1", "stochastic", "e8m0"),
    ],
)
def test_pieces_give_the_bytes_of_one_pass(
    rows: int,
    cols: int,
    block: int,
    fmt: str,
    rounding: str,
    scale: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = REGISTRY[fmt]
    x = torch.from_numpy(np.random.default_rng(rows * cols).standard_normal((rows, cols)))
    x = x.to(torch.float32)
    generator = torch.Generator().manual_seed(5)
    elements, scales = block_quantize(
        x, fmt, block_size=block, rounding=rounding, scale=scale, generator=generator
    )
    codes = to_codes(elements.reshape(rows, -1)[:, :cols], spec)
    monkeypatch.setattr(block_payload, "PIECE_VALUES", 100)
    monkeypatch.setattr(block_payload, "_SPAN_VALUES", 12)  # numpy steps in several spans
    monkeypatch.setattr(parallel, "workers", lambda: 3)
    piece_scales, payload = encode_blocks(
        x,
        spec,
        block=block,
        rounding=rounding,
        scale=scale,
        generator=torch.Generator().manual_seed(5),
    )
    np.testing.assert_array_equal(piece_scales.numpy(), scales.reshape(-1).numpy())
    assert payload.tobytes() == pack_codes(codes, code_bits(spec))
    assert payload.size == packed_size(rows * cols, code_bits(spec))
    decoded = decode_blocks(memoryview(payload), piece_scales, spec, BlockLayout(rows, cols, block))
    expected = fake_quantize(
        x,
        fmt,
        block_size=block,
        rounding=rounding,
        scale=scale,
        generator=torch.Generator().manual_seed(5),
    )
    np.testing.assert_array_equal(
        decoded.numpy().view(np.int32), expected.reshape(-1).numpy().view(np.int32)
    )


def test_long_rows_are_split_in_whole_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(block_payload, "PIECE_VALUES", 100)
    pieces = list(BlockLayout(2, 136, 64).pieces())
    assert [(p.row, p.col, p.col_end) for p in pieces] == [
        (0, 0, 64),
        (0, 64, 128),
        (0, 128, 136),
        (1, 0, 64),
        (1, 64, 128),
        (1, 128, 136),
    ]
    # 131 values a row: a row boundary is no multiple of 8 codes, so 8 whole rows a piece.
    assert [(p.row, p.row_end) for p in BlockLayout(9, 131, 16).pieces()] == [(0, 8), (8, 9)]


def test_a_damaged_last_piece_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(block_payload, "PIECE_VALUES", 100)
    spec, layout = REGISTRY["int4"], BlockLayout(1, 1001, 17)
    x = torch.linspace(-1, 1, 1001).view(1, -1)
    scales, payload = encode_blocks(
        x, spec, block=17, rounding="nearest_even", scale="e8m0", generator=None
    )
    padded = payload.copy()
    padded[-1] |= 0x10  # the padding nibble after code 1001
    with pytest.raises(PayloadError, match="padding codes after 1001 codes"):
        decode_blocks(memoryview(padded), scales, spec, layout)
    with pytest.raises(PayloadError, match="got 500 bytes, expected 501"):
        decode_blocks(memoryview(payload[:-1]), scales, spec, layout)


def test_spans_start_on_aligned_offsets_and_cover_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(parallel, "workers", lambda: 3)
    for length in (0, 1, 7, 8, 100, 1001):
        spans = parallel.spans(length, 10, align=8)
        assert all(start % 8 == 0 for start, _ in spans)
        covered = [i for start, end in spans for i in range(start, end)]
        assert covered == list(range(length))
