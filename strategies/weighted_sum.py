"""Σ w_n Δ_n over a round's updates, summed in place in float32.

Aggregation is the server's inner loop: for N replies of P parameters it touches N·P
values. Summing with ``total += w * delta`` allocates a temporary model per reply and
passes over memory three times; torch's ``add_(delta, alpha=w)`` reads each update once
and writes the running sum once, into one buffer per model array that is reused for the
whole round. An update that can add itself (`AddsInto`: the Δ of a whole-model reply, an
encoded update) does so a cache-sized span at a time, from its codes, so no array of the
model's size is made per update, and the round is summed span by span, every update's
part of a span before the next, so the span of the sum stays in cache. The sum is
float32, as Flower's own FedAvg aggregates, and adds the updates in the order given (fedq
sorts them by client id), so a run computes the same model bit for bit every time.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from quant.block_payload import ADD_PIECE_VALUES, BlockLayout


@runtime_checkable
class AddsInto(Protocol):
    """An update that adds ``weight * self[key]`` into a float32 sum by itself, a span
    ``[start, end)`` of the flattened array at a time."""

    def layout(self, key: str) -> BlockLayout | None:
        """The layout whose spans it takes for ``key`` (None: any span)."""

    def add_span(
        self,
        key: str,
        flat: torch.Tensor,
        weight: float,
        span: tuple[int, int],
        scratch: torch.Tensor,
    ) -> None:
        """``flat[start:end] += weight * self[key].ravel()[start:end]``; ``scratch``: a
        float32 buffer of at least ``end - start`` values it may overwrite."""


def weighted_sum(
    deltas: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float],
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, np.ndarray]:
    """``{key: Σ_n weights[n] · deltas[n][key]}`` as float32 arrays of ``shapes[key]``.

    ``deltas`` are float32 arrays keyed like ``shapes`` (other dtypes are converted one
    array at a time); an empty ``deltas`` gives zeros. Updates that add themselves
    (`AddsInto`) are summed span-major: every update's span, in order, before the next
    span, so that span of the sum stays in cache; each value's sum is the same sequence of
    additions either way.
    """
    if len(deltas) != len(weights):
        raise ValueError(f"{len(deltas)} updates but {len(weights)} weights")
    total = {}
    with warnings.catch_warnings():
        # A decoded update may be a read-only view of its payload: it is only read here.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for key, shape in shapes.items():
            running = torch.zeros(shape, dtype=torch.float32)
            _add_all(running, key, deltas, [float(w) for w in weights])
            total[key] = running.numpy()
    return total


def _add_all(
    running: torch.Tensor,
    key: str,
    deltas: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float],
) -> None:
    """``running += Σ weights[n] · deltas[n][key]``, in the order of ``deltas``."""
    adders = [delta for delta in deltas if _adds_into(delta)]
    if len(adders) < len(deltas):  # plain arrays: one whole array after another
        for delta, weight in zip(deltas, weights, strict=True):
            if _adds_into(delta):
                _add_spans(running, key, [delta], [weight])
            else:
                array = np.asarray(delta[key], dtype=np.float32)
                running.add_(torch.from_numpy(array), alpha=weight)
        return
    _add_spans(running, key, adders, weights)


def _adds_into(delta: object) -> bool:
    """Whether ``delta`` is `AddsInto` (what ``isinstance`` checks, without the runtime
    protocol check's cost per call)."""
    return callable(getattr(delta, "add_span", None)) and callable(getattr(delta, "layout", None))


def _add_spans(
    running: torch.Tensor, key: str, adders: Sequence[AddsInto], weights: Sequence[float]
) -> None:
    """Span-major: for each span of ``running``, every adder's part of it in order."""
    layouts = {layout for adder in adders if (layout := adder.layout(key)) is not None}
    if len(layouts) > 1:
        raise ValueError(f"{key}: updates laid out differently: {sorted(map(str, layouts))}")
    layout = layouts.pop() if layouts else BlockLayout(1, running.numel(), 1)
    spans = layout.spans(ADD_PIECE_VALUES)
    scratch = torch.empty(max((end - start for start, end in spans), default=0))
    flat = running.view(-1)
    for span in spans:
        for adder, weight in zip(adders, weights, strict=True):
            adder.add_span(key, flat, weight, span, scratch)
