"""The uniform draws of stochastic rounding, addressable by position.

Stochastic rounding needs one uniform number in [0, 1) per value. A tensor's draws are
one stream: the value at flat position ``i`` (of the layout the rounding works on, C order)
gets the ``i``-th float32 of numpy's ``Generator(PCG64DXSM(seed)).random(dtype=float32)``,
whose draws have 24 random bits each (as ``torch.rand``'s float32 draws). Any span of the
stream can be drawn on its own: the bit generator jumps to the span's start
(``advance``, logarithmic in the distance), so a codec that encodes a large tensor a
cache-sized piece at a time, or on several threads, gets exactly the draws of one pass
over the whole tensor. That is what keeps ``decode(encode(x))`` equal to
``fake_quantize(x)`` bit for bit with the same generator.

The ``seed`` comes from the caller's ``torch.Generator`` (one 62-bit draw per tensor), so a
seeded generator still makes every draw reproducible and successive tensors differ.
Filling from numpy's PCG64DXSM takes well under half of ``torch.rand``'s time on one core
(``python bench/bench_codecs.py`` times the ``:sr`` codecs), and a large fill is split over
the codec's threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from quant import parallel

_SEED_BOUND = 1 << 62
_SPAN_VALUES = 1 << 18  # a span per thread only when each has at least this many draws


@dataclass(frozen=True)
class Uniforms:
    """The stream of uniform float32 draws in [0, 1) of one seed, from position ``start``."""

    seed: int
    start: int = 0

    @classmethod
    def from_generator(cls, generator: torch.Generator | None) -> Uniforms:
        """A fresh stream, its seed drawn from ``generator`` (None: torch's default one)."""
        seed = torch.randint(0, _SEED_BOUND, (1,), generator=generator, dtype=torch.int64)
        return cls(int(seed.item()))

    def at(self, offset: int) -> Uniforms:
        """The same stream, ``offset`` values further on."""
        return Uniforms(self.seed, self.start + offset)

    def draw(self, count: int) -> np.ndarray:
        """Draws ``start .. start + count - 1`` as a float32 array."""
        out = np.empty(count, dtype=np.float32)
        self.fill(out)
        return out

    def fill(self, out: np.ndarray) -> None:
        """Write draws ``start .. start + out.size - 1`` into the contiguous float32 ``out``."""
        if not out.flags.c_contiguous or out.dtype != np.float32:
            raise ValueError(
                f"uniforms fill a C-contiguous float32 array, got {out.dtype} "
                f"(contiguous: {out.flags.c_contiguous})"
            )
        flat = out.reshape(-1)  # a view, as out is contiguous: the draws land in out

        def fill_span(first: int, last: int) -> None:
            _generator_at(self.seed, self.start + first).random(
                dtype=np.float32, out=flat[first:last]
            )

        parallel.for_spans(flat.size, fill_span, _SPAN_VALUES)

    def tensor(
        self,
        shape: torch.Size | tuple[int, ...],
        dtype: torch.dtype,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draws ``start ..`` shaped as ``shape`` (C order), as a tensor of ``dtype``.

        ``out`` (contiguous float32 of that shape, optional) receives float32 draws without
        a fresh allocation; a float64 tensor holds the same values as the float32 draws.
        """
        if out is not None and dtype == torch.float32:
            if out.dtype != torch.float32 or not out.is_contiguous() or out.shape != shape:
                raise ValueError(
                    f"out must be a contiguous float32 tensor of shape {tuple(shape)}, "
                    f"got {out.dtype} {tuple(out.shape)}"
                )
            self.fill(out.numpy())
            return out
        draws = torch.from_numpy(self.draw(int(np.prod(shape, dtype=np.int64)))).view(shape)
        return draws if dtype == torch.float32 else draws.to(dtype)


def _generator_at(seed: int, position: int) -> np.random.Generator:
    """A numpy Generator whose next float32 draw is draw ``position`` of ``seed``'s stream.

    Each 64-bit output of the bit generator gives two float32 draws (its low half first):
    jump over ``position // 2`` outputs, then spend the low half if ``position`` is odd.
    """
    bits = np.random.PCG64DXSM(seed)
    bits.advance(position // 2)
    generator = np.random.Generator(bits)
    if position % 2:
        generator.random(1, dtype=np.float32)
    return generator
