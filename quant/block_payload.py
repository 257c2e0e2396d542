"""Block-scaled values <-> (block scales, packed element codes), a cache-sized piece at a time.

Quantizing, coding and packing 16 M values in whole-tensor passes reads and writes every
intermediate through main memory, and each fresh intermediate of tens of megabytes costs
page faults on top. Blocks are independent, so `encode_blocks` runs
:func:`quant.formats.block_quantize`, :func:`quant.element_codes.to_codes` and
:func:`quant.bitpack.pack_into` on pieces of about :data:`PIECE_VALUES` values (whole rows,
or whole blocks of one long row) while they sit in cache, writing into the packed payload
and the scale array; `decode_blocks` does the reverse into the output tensor, and
`BlockDecoder.add` adds a piece's weighted values into a running sum without an output
tensor at all (the server's aggregation, :mod:`quant.received_tensor`).

The results are those of one call on the whole tensor, bit for bit: each piece holds whole
blocks and its row's ragged tail only at its end, and stochastic rounding gives each
piece the span of the tensor's stream of uniforms (:mod:`quant.uniforms`) that one call
would have used for it. Every piece but the last starts on a multiple of 8 codes, so it packs to
whole bytes at a byte offset for every code width.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from quant import parallel
from quant.bitpack import (
    check_padding,
    pack_into,
    packed_size,
    unpack_array,
    unpack_high_nibbles,
)
from quant.constants import STOCHASTIC, FormatSpec
from quant.element_codes import (
    all_codes_finite,
    bits_from_codes,
    check_packed_integer_codes,
    code_bits,
    code_factor,
    codes_from_bits,
    narrow_bits,
    narrow_tensor,
)
from quant.errors import PayloadError
from quant.formats import block_quantize
from quant.uniforms import Uniforms

PIECE_VALUES = 1 << 20
"""Values per piece (4 MiB of float32): intermediates this size stay in cache, and are
recycled by the allocator instead of faulting in fresh pages; few enough pieces that
torch's per-operation thread start-up does not add up (16 M values: 16 pieces)."""
ADD_PIECE_VALUES = 1 << 18
"""Values per piece when decoded values are added into a sum (`BlockDecoder.add`, and the
server's weighted sum of a round's updates, piece by piece): the 1 MiB scratch buffer,
the codes and the piece of the sum stay in a core's L2 cache."""
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

    def pieces(self, size: int | None = None) -> Iterator[Piece]:
        """The pieces of about ``size`` values (default `PIECE_VALUES`) in C order; each
        but the last starts a multiple of 8 codes in."""
        rows, cols, block = self.rows, self.cols, self.block
        size = size or PIECE_VALUES
        if block == 0 or rows * cols <= size:
            yield Piece(0, rows, 0, cols)
            return
        step = _ALIGN // math.gcd(cols, _ALIGN)  # rows per piece: a multiple of this
        if cols > size and (rows == 1 or cols % _ALIGN == 0):
            unit = math.lcm(block, _ALIGN)
            width = max(unit, size // unit * unit)
            for row in range(rows):
                for col in range(0, cols, width):
                    yield Piece(row, row + 1, col, min(col + width, cols))
            return
        height = max(step, size // cols // step * step)
        for row in range(0, rows, height):
            yield Piece(row, min(row + height, rows), 0, cols)

    def spans(self, size: int | None = None) -> list[tuple[int, int]]:
        """`pieces` as ``[start, end)`` ranges of the flattened tensor (each is one)."""
        return [self.span(piece) for piece in self.pieces(size)]

    def span(self, piece: Piece) -> tuple[int, int]:
        """``piece`` (whole rows, or part of one row) as a range of the flattened tensor."""
        start = self.code_offset(piece)
        return start, start + (piece.row_end - piece.row) * (piece.col_end - piece.col)

    def piece(self, start: int, end: int) -> Piece:
        """The piece whose `span` is ``[start, end)``.

        Raises:
            ValueError: not whole rows, nor part of one row starting on a block and on
                8 codes (the spans of another layout).
        """
        cols = max(self.cols, 1)
        row, col = divmod(start, cols)
        if col == 0 and end % cols == 0:
            return Piece(row, end // cols, 0, self.cols)
        unit = math.lcm(self.block or 1, _ALIGN)
        if (end - 1) // cols != row or col % unit:
            raise ValueError(f"[{start}, {end}) is not a piece of {self}")
        return Piece(row, row + 1, col, end - row * cols)

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
    # One call on the whole tensor draws value (row, col) at row * padded_cols + col of
    # its zero-padded blocks; a piece's blocks start there at its first value.
    padded_cols = layout.blocks_per_row * block if block else layout.cols
    uniforms = Uniforms.from_generator(generator) if rounding == STOCHASTIC else None

    def run(piece: Piece) -> None:
        x = values[piece.row : piece.row_end, piece.col : piece.col_end]
        first = piece.row * padded_cols + piece.col
        elements, piece_scales = block_quantize(
            x,
            spec.name,
            block_size=block,
            rounding=rounding,
            scale=scale,
            uniforms=None if uniforms is None else uniforms.at(first),
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
    return BlockDecoder(payload, scales, spec, layout).decode_all()


def _checked_codes(payload: memoryview, spec: FormatSpec, layout: BlockLayout) -> np.ndarray:
    """The packed codes as uint8, after the checks that need no decoding: length, zero
    padding, and for integer formats no code outside the format."""
    bits, count = code_bits(spec), layout.rows * layout.cols
    raw = np.frombuffer(payload, dtype=np.uint8)
    if raw.size != packed_size(count, bits):
        unpack_array(raw, bits, count)  # raises the length error
    check_padding(raw, bits, count)
    if spec.kind == "int":
        check_packed_integer_codes(raw, spec)
    return raw


class BlockDecoder:
    """Decodes one block-scaled payload piece by piece (`decode`), or adds its weighted
    values into a sum (`add`).

    A value is ``widen(code) * unit_scale`` of its block. Integer codes are widened
    without a table: 8-bit codes are the int8 values, and 4-bit codes are unpacked into the
    high nibble of a byte, i.e. 16 times the value. The code factor (2**-fraction bits for
    integers, and that 1/16) is folded into the unit scales when every product is exact,
    else applied to the widened codes: either way the product rounds once, to the value
    ``fake_quantize`` gives.

    Constructing it checks what can be checked on the packed codes (length, zero padding,
    integer codes inside the format: PayloadError); `adds_without_decoding` says whether
    that was every check decoding makes.
    """

    def __init__(
        self,
        payload: memoryview,
        scales: torch.Tensor,
        spec: FormatSpec,
        layout: BlockLayout,
    ) -> None:
        self.raw = _checked_codes(payload, spec, layout)
        self.spec, self.layout = spec, layout
        self.bits = code_bits(spec)
        self.high_nibbles = spec.kind == "int" and self.bits == 4
        factor = code_factor(spec) / (16 if self.high_nibbles else 1)
        low, high = (float(x) for x in torch.aminmax(scales)) if scales.numel() else (1.0, 1.0)
        folded = _folded(scales, factor, low, high)
        # The factor left to multiply the widened codes by (1: folded into the scales).
        self.factor = factor if folded is None else 1.0
        self.unit_scales = scales if folded is None else folded
        # An overflow to inf needs a block scale above FLT_MAX / the format's largest value.
        self.check_finite = high * spec.max_normal > _FLOAT32_MAX

    @property
    def adds_without_decoding(self) -> bool:
        """Whether every check of decoding was made: no product can overflow and every
        code is a finite value (integers: checked; FP4, FP6: all are). Then `add` cannot
        fail; otherwise only `decode` tells (FP8's NaN codes, huge scales)."""
        integer = self.spec.kind == "int"
        return not self.check_finite and (integer or all_codes_finite(self.spec))

    def decode_all(self) -> torch.Tensor:
        """All values (rows * cols float32, C order), a piece at a time."""
        layout = self.layout
        out = torch.empty(layout.rows * layout.cols, dtype=torch.float32)
        grid = out.view(layout.rows, layout.cols)
        for piece in layout.pieces():
            self.decode(piece, grid[piece.row : piece.row_end, piece.col : piece.col_end])
        return out

    def decode(self, piece: Piece, target: torch.Tensor) -> None:
        """Write ``piece``'s float32 values into ``target`` (height, width)."""
        values = self.widen(piece, target)
        scales = self.scales_of(piece, self.unit_scales)
        for part, scale, out in _block_parts(values, scales, self.layout.block, values):
            torch.mul(part, scale, out=out)
        if self.check_finite:
            low, high = torch.aminmax(target)
            if not (math.isfinite(low) and math.isfinite(high)):
                raise PayloadError("decodes to NaN or Inf values")

    def add(self, piece: Piece, target: torch.Tensor, weight: float, scratch: torch.Tensor) -> None:
        """``target += weight * values of piece``; ``target`` (height, width) float32.

        The codes are widened into ``scratch`` (float32, at least the piece's values) and
        added with one ``addcmul_`` against the weighted block scales (``weight * scale``,
        one float32 rounding): each sum differs from adding the decoded values
        (``add_(decoded, alpha=weight)``) by at most that rounding, a relative 2**-24 of
        the term, and no decoded array passes through main memory.
        """
        height, width = target.shape
        values = self.widen(piece, scratch[: height * width].view(height, width))
        scales = self.scales_of(piece, self.unit_scales) * weight
        for part, scale, out in _block_parts(values, scales, self.layout.block, target):
            out.addcmul_(part, scale)

    def widen(self, piece: Piece, out: torch.Tensor) -> torch.Tensor:
        """``piece``'s codes as float32 values times `factor`, written into ``out``."""
        spec, layout, bits = self.spec, self.layout, self.bits
        width, height = piece.col_end - piece.col, piece.row_end - piece.row
        offset, count = layout.code_offset(piece), width * height
        start, end = packed_size(offset, bits), packed_size(offset + count, bits)
        if spec.kind == "int" and bits == 8:
            patterns = self.raw[start:end]
        elif self.high_nibbles:
            patterns = np.empty(2 * (end - start), dtype=np.uint8)

            def unpack_nibbles(first: int, last: int) -> None:  # numpy, on the pool's threads
                begin, stop = packed_size(offset + first, bits), packed_size(offset + last, bits)
                unpack_high_nibbles(
                    self.raw[begin:stop],
                    last - first,
                    out=patterns[first : first + 2 * (stop - begin)],
                )

            parallel.for_spans(count, unpack_nibbles, _SPAN_VALUES, _ALIGN)
            patterns = patterns[:count]
        else:
            patterns = np.empty(count, dtype=np.uint16)

            def unpack(first: int, last: int) -> None:  # numpy, on the pool's threads
                begin, stop = packed_size(offset + first, bits), packed_size(offset + last, bits)
                codes = unpack_array(self.raw[begin:stop], bits, last - first)
                bits_from_codes(codes, spec, out=patterns[first:last])

            parallel.for_spans(count, unpack, _SPAN_VALUES, _ALIGN)
        out.copy_(narrow_tensor(patterns, spec).view(height, width))
        return out.mul_(self.factor) if self.factor != 1 else out

    def scales_of(self, piece: Piece, scales: torch.Tensor) -> torch.Tensor:
        """The (height, blocks per row) slice of ``scales`` (one per block) for ``piece``;
        for block 0 the tensor's one scale."""
        if self.layout.block == 0:  # one scale for the whole tensor
            return scales
        width, height = piece.col_end - piece.col, piece.row_end - piece.row
        first = self.layout.scale_offset(piece)
        per_row = -(-width // self.layout.block)
        return scales[first : first + per_row * height].view(height, per_row)


def _block_parts(
    values: torch.Tensor, scales: torch.Tensor, block: int, out: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(values, scales, out) views that broadcast one scale over each block of a row.

    ``values`` and ``out`` are (rows, n), ``scales`` (rows, blocks per row) or a single
    scale for block 0. Each row's whole blocks come as (rows, n // block, block) against
    (rows, n // block, 1), its ragged tail as (rows, n % block) against (rows, 1): no
    padding is materialised (a shape such as (2**28, 1) would pad every row to a block).
    """
    if block == 0:
        return [(values, scales.reshape(()), out)]
    whole = values.shape[1] - values.shape[1] % block
    parts = []
    if whole:
        parts.append(
            (
                values[:, :whole].unflatten(1, (-1, block)),
                scales[:, : whole // block, None],
                out[:, :whole].unflatten(1, (-1, block)),
            )
        )
    if whole < values.shape[1]:
        parts.append((values[:, whole:], scales[:, -1:], out[:, whole:]))
    return parts


def _folded(scales: torch.Tensor, factor: float, low: float, high: float) -> torch.Tensor | None:
    """``scales * factor`` if every product is an exact float32 normal, else None.

    ``low`` and ``high`` are the smallest and largest scale (finite, > 0). Then ``code *
    (scale * factor)`` is the same real number as ``(code * factor) * scale`` with exact
    factors, so it rounds to the same float32: one multiplication.
    """
    if factor == 1:
        return scales
    tiny = torch.finfo(torch.float32).tiny
    exact = low >= tiny and low * factor >= tiny and high * factor <= _FLOAT32_MAX
    return scales * factor if exact else None
