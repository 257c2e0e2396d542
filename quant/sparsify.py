"""Which values a sparsified tensor keeps: the top-k magnitudes, or k random positions.

Both return the kept positions sorted, as int64. They avoid the whole-tensor sort-like
work of ``torch.topk`` and ``torch.randperm`` (hundreds of milliseconds on 16 M values):

* top-k: a threshold is estimated from a fixed random sample of the magnitudes, one pass
  keeps the candidates at or above it (a little more than k of them), and an exact
  selection among the candidates picks the k largest. If the estimate left fewer than k
  candidates, the exact selection runs over everything instead.
* rand-k: positions are drawn uniformly with replacement from the caller's generator
  until at least k distinct ones are in hand, and a random k of those are kept: a
  uniformly random k-subset. For k above half the length, the positions left out are
  drawn that way instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from quant import parallel

_SAMPLE = 1 << 16  # magnitudes sampled to estimate the top-k threshold
_SAMPLE_SEED = 0x70B  # a fixed seed: the same update always selects the same way
_MARGIN_SIGMAS = 6.0  # head room of the estimate, in binomial standard deviations


def top_k_positions(values: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted positions of the ``k`` largest magnitudes of a finite 1-D float32 tensor.

    Ties at the k-th magnitude are broken arbitrarily (as ``torch.topk`` does).
    """
    x = values.numpy()
    n = x.size
    if n <= 4 * _SAMPLE or k > n // 4:
        return _exact_top_k(x, np.arange(n), k)
    sample = np.abs(x[np.random.default_rng(_SAMPLE_SEED).integers(0, n, _SAMPLE)])
    # Aim for k plus a margin of candidates: the sample's count above the threshold is
    # binomial, so a few standard deviations make too few candidates very unlikely.
    share = k / n
    wanted = share * _SAMPLE + _MARGIN_SIGMAS * math.sqrt(share * _SAMPLE) + 1
    rank = min(_SAMPLE - 1, max(0, _SAMPLE - math.ceil(wanted)))
    threshold = np.partition(sample, rank)[rank]
    candidates = np.concatenate(
        parallel.run_all(lambda span: _at_least(x, threshold, *span), parallel.spans(n, 1 << 20))
    )
    if candidates.size < k:
        candidates = np.arange(n)
    return _exact_top_k(x[candidates], candidates, k)


def _at_least(x: np.ndarray, threshold: float, start: int, end: int) -> np.ndarray:
    """Positions in ``[start, end)`` whose magnitude is at least ``threshold``."""
    part = x[start:end]
    above = part >= threshold
    above |= part <= -threshold
    return np.flatnonzero(above) + start


def _exact_top_k(x: np.ndarray, positions: np.ndarray, k: int) -> torch.Tensor:
    """The ``k`` of ``positions`` (ascending) whose values ``x`` have the largest magnitudes.

    Selected with a mask over the ascending positions, so they come out sorted without a
    sort; ties at the k-th magnitude go to the first positions.
    """
    if k < x.size:
        magnitudes = np.abs(x)
        kth = np.partition(magnitudes, x.size - k)[x.size - k]  # the k-th largest
        keep = magnitudes > kth
        missing = k - int(np.count_nonzero(keep))
        if missing:
            keep[np.flatnonzero(magnitudes == kth)[:missing]] = True
        positions = positions[keep]
    return torch.from_numpy(positions.astype(np.int64, copy=False))


def random_positions(n: int, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """Sorted positions of a uniformly random ``k``-subset of ``range(n)`` (0 < k < n)."""
    if k > n // 2:
        mask = np.ones(n, dtype=np.bool_)
        mask[_distinct_draws(n, n - k, generator)] = False
        return torch.from_numpy(np.flatnonzero(mask).astype(np.int64, copy=False))
    return torch.from_numpy(np.sort(_distinct_draws(n, k, generator)))


def _distinct_draws(n: int, k: int, generator: torch.Generator | None) -> np.ndarray:
    """A uniformly random ``k``-subset of ``range(n)`` (k <= n / 2), unsorted.

    Uniform draws until at least k distinct values are in hand: by symmetry, that set is
    a uniformly random subset of its size, and a uniformly random k of it is one of size k.
    """
    draws = np.empty(0, dtype=np.int64)
    distinct = draws
    while distinct.size < k:
        # Each draw is new with probability >= 1/2, so one round is usually enough.
        more = torch.randint(0, n, (2 * (k - distinct.size) + 64,), generator=generator)
        draws = np.sort(np.concatenate([draws, more.numpy()]))
        distinct = draws[np.concatenate(([True], draws[1:] != draws[:-1]))]
    keep = torch.randperm(distinct.size, generator=generator)[:k].numpy()
    return distinct[keep]
