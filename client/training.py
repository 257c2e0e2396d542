"""The local training loop: a fixed number of minibatch SGD steps on the client's data."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from fedq.data import LabeledArrays


def round_seed(seed: int, server_round: int, partition_id: int) -> int:
    """A distinct, reproducible seed for each (run seed, round, client)."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


def train_local(
    model: nn.Module,
    data: LabeledArrays,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> float:
    """Run `steps` SGD steps on minibatches of `data`; return the mean training loss (nats).

    The minibatches are `minibatches(len(data), batch_size, steps, seed)`.
    """
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    total_loss = 0.0
    for batch in minibatches(len(data), batch_size, steps, seed):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        loss.backward()
        optimizer.step()
        total_loss += loss.item()
    return total_loss / steps


def minibatches(num_examples: int, batch_size: int, steps: int, seed: int) -> Iterator[Tensor]:
    """Indices of `steps` minibatches of `batch_size` examples (fewer if the data is smaller).

    Drawn without replacement from a reshuffled permutation, epoch after epoch, from a
    generator seeded with `seed`, so a round is reproducible.
    """
    if num_examples == 0:
        raise ValueError("cannot train on an empty partition")
    rng = np.random.default_rng(seed)
    batch_size = min(batch_size, num_examples)
    order, cursor = rng.permutation(num_examples), 0
    for _ in range(steps):
        if cursor + batch_size > len(order):
            order, cursor = rng.permutation(num_examples), 0
        yield torch.from_numpy(order[cursor : cursor + batch_size])
        cursor += batch_size
