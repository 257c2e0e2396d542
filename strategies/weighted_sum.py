"""Σ w_n Δ_n over a round's updates, summed in place in float32.

Aggregation is the server's inner loop: for N replies of P parameters it touches N·P
values. Summing with ``total += w * delta`` allocates a temporary model per reply and
passes over memory three times; torch's ``add_(delta, alpha=w)`` reads each update once
and writes the running sum once, into one buffer per model array that is reused for the
whole round. The sum is float32, as Flower's own FedAvg aggregates, and adds the updates
in the order given (fedq sorts them by client id), so a run computes the same model bit
for bit every time.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch


def weighted_sum(
    deltas: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float],
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, np.ndarray]:
    """``{key: Σ_n weights[n] · deltas[n][key]}`` as float32 arrays of ``shapes[key]``.

    ``deltas`` are float32 arrays keyed like ``shapes`` (other dtypes are converted one
    array at a time); an empty ``deltas`` gives zeros.
    """
    if len(deltas) != len(weights):
        raise ValueError(f"{len(deltas)} updates but {len(weights)} weights")
    total = {key: torch.zeros(shape, dtype=torch.float32) for key, shape in shapes.items()}
    with warnings.catch_warnings():
        # A decoded update may be a read-only view of its payload: it is only read here.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for delta, weight in zip(deltas, weights, strict=True):
            for key, running in total.items():
                array = np.asarray(delta[key], dtype=np.float32)
                running.add_(torch.from_numpy(array), alpha=float(weight))
    return {key: running.numpy() for key, running in total.items()}
