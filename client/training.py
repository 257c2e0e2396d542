"""The local training loop: a fixed number of minibatch SGD steps on the client's data."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

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

    Minibatches are drawn without replacement from a reshuffled permutation, epoch after
    epoch, from a generator seeded with `seed`, so a round is reproducible.
    """
    if len(data) == 0:
        raise ValueError("cannot train on an empty partition")
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    batch_size = min(batch_size, len(data))
    order, cursor = rng.permutation(len(data)), 0
    total_loss = 0.0
    for _ in range(steps):
        if cursor + batch_size > len(order):
            order, cursor = rng.permutation(len(data)), 0
        batch = torch.from_numpy(order[cursor : cursor + batch_size])
        cursor += batch_size
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        loss.backward()
        optimizer.step()
        total_loss += loss.item()
    return total_loss / steps
