"""Block-scaled values <-> (block scales, packed element codes), a cache-sized piece at a time.

Quantizing, coding and packing 16 M values in whole-tensor passes reads and writes every
intermediate through main memory, and each fresh intermediate of tens of megabytes costs
page faults on top. Blocks are independent, so `encode_blocks` runs
:func:`quant.formats.block_quantize`, :func:`quant.element_codes.to_codes` and
:func:`quant.bitpack.pack_into` on pieces of about :data:`PIECE_VALUES` values (whole rows,
or whole blocks of one long row) while they sit in cache, writing into the packed payload
and the scale array; `decode_blocks` does the reverse into the output tensor.

The results are those of one call on the whole tensor, bit for bit: each piece holds whole
blocks and its row's ragged tail only at its end, and stochastic rounding draws its
uniforms piece after piece, in the order one call would (torch's CPU generator fills a
tensor serially). Every piece but the last starts on a multiple of 8 codes, so it packs to
whole bytes at a byte offset for every code width.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from quant import parallel
from quant.bitpack import check_padding, pack_into, packed_size, unpack_array
from quant.constants import FormatSpec
from quant.element_codes import (
    bits_from_codes,
    code_bits,
    code_factor,
    codes_from_bits,
    narrow_bits,
    narrow_tensor,
)
from quant.errors import PayloadError
from quant.formats import block_quantize

PIECE_VALUES = 1 << 20
"""Values per piece (4 MiB of float32): intermediates this size stay in cache, and are
recycled by the allocator instead of faulting in fresh pages; few enough pieces that
torch's per-operation thread start-up does not add up (16 M values: 16 pieces)."""
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)
# The numpy steps of a piece (codes, packing) are cut into spans of at least this many
# values, one per core.
_SPAN_VALUES = 1 << 18
_ALIGN = 8  # codes: a multiple of 8 is a whole number of bytes at every code width


@dataclass(frozen=True)
class Piece:
    """Rows ``[row, row_end)`` and columns ``[col, col_end)`` of a (rows, cols) tensor."""

    row: int
    row_end: int
    col: int
    col_end: int


@dataclass(frozen=True)
class BlockLayout:
    """``rows`` rows of ``cols`` values, each row cut into blocks of ``block`` (0: one)."""

    rows: int
    cols: int
    block: int

    @property
    def blocks_per_row(self) -> int:
        """Scales per row: ceil(cols / block) (the whole tensor's one scale for block 0)."""
        return 1 if self.block == 0 else -(-self.cols // self.block)

    @property
    def num_scales(self) -> int:
        """Scales of the tensor: rows * blocks_per_row, or 1 for block 0."""
        return 1 if self.block == 0 else self.rows * self.blocks_per_row

    def pieces(self) -> Iterator[Piece]:
        """The pieces in C order; each but the last starts a multiple of 8 codes in."""
        rows, cols, block = self.rows, self.cols, self.block
        if block == 0 or rows * cols <= PIECE_VALUES:
            yield Piece(0, rows, 0, cols)
            return
        step = _ALIGN // math.gcd(cols, _ALIGN)  # rows per piece: a multiple of this
        if cols > PIECE_VALUES and (rows == 1 or cols % _ALIGN == 0):
            unit = math.lcm(block, _ALIGN)
            width = max(unit, PIECE_VALUES // unit * unit)
            for row in range(rows):
                for col in range(0, cols, width):
                    yield Piece(row, row + 1, col, min(col + width, cols))
            return
        height = max(step, PIECE_VALUES // cols // step * step)
        for row in range(0, rows, height):
            yield Piece(row, min(row + height, rows), 0, cols)

    def code_offset(self, piece: Piece) -> int:
        """Codes before ``piece`` in C order."""
        return piece.row * self.cols + piece.col

    def scale_offset(self, piece: Piece) -> int:
        """Scales before ``piece``, row by row."""
        return 0 if self.block == 0 else piece.row * self.blocks_per_row + piece.col // self.block


def encode_blocks(
    values: torch.Tensor,
    spec: FormatSpec,
    *,
    block: int,
    rounding: str,
    scale: str,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, np.ndarray]:
    """(float32 scales, packed codes) of a contiguous (rows, cols) float32 tensor.

    The scales are ``block_quantize``'s, row by row; the codes are every element, row after
    row without padding, packed at ``code_bits(spec)`` bits each.
    """
    layout = BlockLayout(values.shape[0], values.shape[1], block)
    bits = code_bits(spec)
    payload = np.empty(packed_size(values.numel(), bits), dtype=np.uint8)
    scales = torch.empty(layout.num_scales, dtype=torch.float32)

    def run(piece: Piece) -> None:
        x = values[piece.row : piece.row_end, piece.col : piece.col_end]
        elements, piece_scales = block_quantize(
            x, spec.name, block_size=block, rounding=rounding, scale=scale, generator=generator
        )
        start = layout.scale_offset(piece)
        scales[start : start + piece_scales.numel()] = piece_scales.reshape(-1)
        elements = elements.reshape(x.shape[0], -1)[:, : x.shape[1]]
        narrow = narrow_bits(elements, spec, overwrite=True)  # block_quantize's own buffer
        offset = layout.code_offset(piece)

        def pack(first: int, last: int) -> None:  # numpy, on the pool's threads
            codes = codes_from_bits(narrow[first:last], spec)
            start, end = packed_size(offset + first, bits), packed_size(offset + last, bits)
            pack_into(codes, bits, payload[start:end])

        parallel.for_spans(narrow.size, pack, _SPAN_VALUES, _ALIGN)

    for piece in layout.pieces():
        run(piece)
    return scales, payload


def decode_blocks(
    payload: memoryview, scales: torch.Tensor, spec: FormatSpec, layout: BlockLayout
) -> torch.Tensor:
    """The float32 values (rows * cols, C order) of ``encode_blocks``'s output.

    ``scales`` must be finite and positive. Raises:
        PayloadError: a payload of the wrong length, non-zero padding, a code outside the
            format, or a product that is not finite.
    """
    bits, count = code_bits(spec), layout.rows * layout.cols
    raw = np.frombuffer(payload, dtype=np.uint8)
    if raw.size != packed_size(count, bits):
        unpack_array(raw, bits, count)  # raises the length error
    check_padding(raw, bits, count)
    factor = code_factor(spec)
    folded = _folded(scales, factor)
    # An overflow to inf needs a block scale above FLT_MAX / the format's largest value.
    check_finite = float(scales.max()) * spec.max_normal > _FLOAT32_MAX
    out = torch.empty(count, dtype=torch.float32)
    grid = out.view(layout.rows, layout.cols)

    def run(piece: Piece) -> None:
        width, height = piece.col_end - piece.col, piece.row_end - piece.row
        offset = layout.code_offset(piece)
        patterns = np.empty(width * height, dtype=np.uint8 if spec.kind == "int" else np.uint16)

        def unpack(first: int, last: int) -> None:  # numpy, on the pool's threads
            start, end = packed_size(offset + first, bits), packed_size(offset + last, bits)
            codes = unpack_array(raw[start:end], bits, last - first)
            bits_from_codes(codes, spec, out=patterns[first:last])

        parallel.for_spans(patterns.size, unpack, _SPAN_VALUES, _ALIGN)
        narrow = narrow_tensor(patterns, spec)
        if folded is None:  # widen and apply the code factor on their own: exact
            narrow = narrow.to(torch.float32).mul_(factor)
        first = layout.scale_offset(piece)
        per_row = 1 if layout.block == 0 else -(-width // layout.block)
        piece_scales = (scales if folded is None else folded)[first : first + per_row * height]
        target = grid[piece.row : piece.row_end, piece.col : piece.col_end]
        scale_rows(narrow, piece_scales, height, layout.block, out=target)
        if check_finite:
            low, high = torch.aminmax(target)
            if not (math.isfinite(low) and math.isfinite(high)):
                raise PayloadError("decodes to NaN or Inf values")

    for piece in layout.pieces():
        run(piece)
    return out


def _folded(scales: torch.Tensor, factor: float) -> torch.Tensor | None:
    """``scales * factor`` if every product is an exact float32 normal, else None.

    Then ``narrow * (scale * factor)`` is the same real number as ``(narrow * factor) *
    scale`` with exact factors, so it rounds to the same float32: one multiplication.
    """
    if factor == 1:
        return scales
    folded = scales * factor
    tiny = torch.finfo(torch.float32).tiny
    exact = bool((scales >= tiny).all()) and bool((folded >= tiny).all())
    return folded if exact and bool(torch.isfinite(folded).all()) else None


def scale_rows(
    elements: torch.Tensor,
    scales: torch.Tensor,
    rows: int,
    block: int,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multiply each block of ``rows`` equal rows of ``elements`` by its scale.

    The same float32 products as fake_quantize's zero-padded ``blocks * scale``, without
    materialising the padding: a shape such as (2**28, 1) would pad every row to a block.
    Writes into ``out`` (shape (rows, n)) or, without it, into ``elements``.
    """
    grid = elements.view(rows, -1)
    target = grid if out is None else out
    if target.dtype != grid.dtype:
        # Widen into the target first, then scale it in place: torch's mixed-dtype
        # broadcast multiply was measured twice as slow, and the products are the same
        # (int8 and float16 widen to float32 exactly).
        target.copy_(grid)
        grid = target
    if block == 0:
        return torch.mul(grid, scales, out=target)
    per_row = scales.view(rows, -1)
    whole = grid.shape[1] - grid.shape[1] % block
    if whole:
        torch.mul(
            grid[:, :whole].unflatten(1, (-1, block)),
            per_row[:, : whole // block, None],
            out=target[:, :whole].unflatten(1, (-1, block)),
        )
    if whole < grid.shape[1]:
        torch.mul(grid[:, whole:], per_row[:, -1:], out=target[:, whole:])
    return target
