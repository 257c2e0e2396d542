"""One tensor of a received update, checked but not necessarily decoded.

`Codec.read` checks a payload as strictly as `Codec.decode` and gives one of these per
tensor. Each can be turned into the array `Codec.decode` returns (`numpy`), or added,
weighted, into a running float32 sum span by span (`add_span`) without first being decoded
into an array of its own. The server aggregates that way: for N replies of P values,
decoding each update to float32 before summing writes and reads back 4·N·P bytes and
keeps them all in memory until the round is aggregated; adding straight from the codes
keeps only the compressed payloads and touches each value of the sum once per reply.

* `BlockTensor`: block-scaled codes (int8, int4, MX formats) whose every check could be
  made on the packed codes; decoded a cache-sized piece at a time when added.
* `SparseTensor`: the kept values of a sparsified tensor and their positions; adding it
  touches only those positions.
* `DenseTensor`: values already decoded (fp32, bf16, fp16, plain fp8, sign, and block
  formats whose checks need the values).

Sums are added span by span (``[start, end)`` of the flattened tensor): a caller summing
many updates adds every update's span before moving to the next, so that span of the sum
stays in cache. A block-scaled tensor takes the spans of its own `layout` (whole rows, or
part of a row starting on a block); the others take any span.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from quant.block_payload import BlockDecoder, BlockLayout

_FLOAT16_MAX = float(np.finfo(np.float16).max)
# Dtypes whose values are exactly their float32 decoding (float16 rounds and saturates).
_EXACT_FROM_FLOAT32 = frozenset({"float32", "float64"})


@dataclass(frozen=True)
class ReceivedTensor(ABC):
    """A checked tensor of a received update: its shape and the dtype it was sent as."""

    shape: tuple[int, ...]
    dtype: str  # "float16", "float32" or "float64"

    @property
    def numel(self) -> int:
        """Values in the tensor."""
        return math.prod(self.shape)

    @property
    def layout(self) -> BlockLayout | None:
        """The layout whose spans `add_span` needs (None: any span)."""
        return None

    @abstractmethod
    def values(self) -> torch.Tensor:
        """The decoded values, flattened, float32 (C order)."""

    def numpy(self) -> np.ndarray:
        """The tensor as `Codec.decode` returns it: ``shape``, in ``dtype``."""
        result = self.values().numpy().reshape(self.shape)
        if self.dtype == "float16":  # saturate: bf16 rounding can pass float16's max
            result = np.clip(result, -_FLOAT16_MAX, _FLOAT16_MAX)
        return result.astype(self.dtype, copy=False)

    def add_span(
        self, flat: torch.Tensor, weight: float, start: int, end: int, scratch: torch.Tensor
    ) -> None:
        """``flat[start:end] += weight * float32(numpy()).ravel()[start:end]``.

        ``flat``: the flattened float32 sum; ``scratch``: a float32 buffer of at least
        ``end - start`` values the call may overwrite. Values are those of torch's
        ``add_`` with ``alpha`` (block-scaled tensors: see `BlockDecoder.add`).
        """
        if self.dtype in _EXACT_FROM_FLOAT32:
            self._add_float32(flat, weight, start, end, scratch)
        else:
            flat[start:end].add_(self._narrow_values[start:end], alpha=weight)

    def _add_float32(
        self, flat: torch.Tensor, weight: float, start: int, end: int, scratch: torch.Tensor
    ) -> None:
        """`add_span` of a tensor whose values are its float32 decoding."""
        flat[start:end].add_(self.values()[start:end], alpha=weight)

    @cached_property
    def _narrow_values(self) -> torch.Tensor:
        """The float32 of `numpy` for a float16 tensor (rounded and saturated)."""
        return torch.from_numpy(self.numpy().astype(np.float32).reshape(-1))


@dataclass(frozen=True)
class DenseTensor(ReceivedTensor):
    """Values decoded when the payload was read."""

    decoded: torch.Tensor  # float32, flattened

    def values(self) -> torch.Tensor:
        return self.decoded


@dataclass(frozen=True)
class BlockTensor(ReceivedTensor):
    """Block-scaled codes as received, checked (`BlockDecoder.adds_without_decoding`)."""

    decoder: BlockDecoder

    @property
    def layout(self) -> BlockLayout:
        return self.decoder.layout

    def values(self) -> torch.Tensor:
        return self.decoder.decode_all()

    def _add_float32(
        self, flat: torch.Tensor, weight: float, start: int, end: int, scratch: torch.Tensor
    ) -> None:
        piece = self.layout.piece(start, end)
        target = flat[start:end].view(piece.row_end - piece.row, piece.col_end - piece.col)
        self.decoder.add(piece, target, weight, scratch)


@dataclass(frozen=True)
class SparseTensor(ReceivedTensor):
    """The kept values of a sparsified tensor at their positions; zeros elsewhere."""

    positions: torch.Tensor  # int64, increasing, in [0, numel)
    kept: torch.Tensor  # float32, one per position

    def values(self) -> torch.Tensor:
        dense = torch.zeros(self.numel, dtype=torch.float32)
        dense[self.positions] = self.kept
        return dense

    def _add_float32(
        self, flat: torch.Tensor, weight: float, start: int, end: int, scratch: torch.Tensor
    ) -> None:
        first, last = torch.searchsorted(self.positions, torch.tensor([start, end])).tolist()
        if first < last:  # gather, add, scatter: torch's add_, as on the dense tensor
            positions = self.positions[first:last]
            sums = flat[positions].add_(self.kept[first:last], alpha=weight)
            flat[positions] = sums
