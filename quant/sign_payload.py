"""The ``sign`` value format: one bit per value and one float32 scale per block.

A block's scale is its mean magnitude (deterministic) or, stochastically, its largest
magnitude with each sign drawn so that the expectation is the value (unbiased). Blocks run
over the flattened values; the last may be short. Encoding works a cache-sized piece of
whole blocks at a time; stochastic draws come from one stream of uniforms over the
zero-padded (blocks, block) tensor (:mod:`quant.uniforms`), each piece taking its span.
"""

from __future__ import annotations

import numpy as np
import torch

from quant import parallel
from quant.bitpack import unpack_array
from quant.block_payload import PIECE_VALUES
from quant.errors import PayloadError
from quant.uniforms import Uniforms


def encode_sign(
    values: torch.Tensor, block: int, *, stochastic: bool, generator: torch.Generator | None
) -> tuple[torch.Tensor, np.ndarray]:
    """(float32 block scales, sign bits packed 8 per byte) of a 1-D float32 vector.

    ``block`` is the values per scale (0: one scale for all). Bit ``i`` is 1 where value
    ``i`` goes out negative.
    """
    count = values.numel()
    block = block or count
    num_blocks = -(-count // block)
    scales = torch.empty(num_blocks, dtype=torch.float32)
    negative = np.empty(count, dtype=np.bool_)
    step = max(1, PIECE_VALUES // block)  # blocks per piece
    uniforms = Uniforms.from_generator(generator) if stochastic else None

    def encode(first: int) -> None:  # blocks [first, first + step)
        last = min(first + step, num_blocks)
        piece = values[first * block : last * block]
        size = piece.numel()
        if size < (last - first) * block:  # the short last block, zero-padded
            piece = torch.cat([piece, piece.new_zeros((last - first) * block - size)])
        blocks = piece.view(-1, block)
        if uniforms is not None:
            scales[first:last] = blocks.abs().amax(dim=1)
            safe = torch.where(scales[first:last] > 0, scales[first:last], 1.0)
            p_plus = (1 + blocks / safe.view(-1, 1)) / 2
            u = uniforms.at(first * block).tensor(blocks.shape, torch.float32)
            negative[first * block : first * block + size] = (u >= p_plus).view(-1)[:size].numpy()
        else:
            sums = blocks.abs().sum(dim=1, dtype=torch.float64)
            sizes = torch.full((last - first,), float(block), dtype=torch.float64)
            sizes[-1] = size - block * (last - first - 1)
            scales[first:last] = sums.div_(sizes)
            negative[first * block : first * block + size] = (piece[:size] < 0).numpy()

    for first in range(0, num_blocks, step):
        encode(first)
    return scales, np.packbits(negative, bitorder="little")


def decode_sign(payload: memoryview, scales: torch.Tensor, count: int, block: int) -> np.ndarray:
    """The ``count`` float32 values of `encode_sign`'s output: ±scale of each value's block.

    Raises:
        PayloadError: a negative scale, a payload of the wrong length or non-zero padding.
    """
    if bool((scales < 0).any()):
        raise PayloadError("sign scales must be >= 0")
    negative = unpack_array(np.frombuffer(payload, dtype=np.uint8), 1, count)
    # Each value's bits are its block's scale with the sign bit set where negative.
    out = np.empty(count, dtype=np.uint32)
    magnitudes = scales.numpy().view(np.uint32)
    blocks = -(-count // block)

    def fill(first: int, last: int) -> None:  # blocks [first, last)
        start, end = first * block, min(last * block, count)
        np.left_shift(negative[start:end], 31, out=out[start:end], dtype=np.uint32)
        whole = min(last, count // block)
        if whole > first:
            grid = out[start : whole * block].reshape(-1, block)
            np.bitwise_or(grid, magnitudes[first:whole, None], out=grid)
        if end > max(whole, first) * block:  # the short last block
            out[max(whole, first) * block : end] |= magnitudes[-1]

    parallel.for_spans(blocks, fill, minimum=max(1, (1 << 20) // block))
    return out.view(np.float32)
