"""Small models for 8x8 digit images, chosen by name, and their evaluation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedq.data import IMAGE_SHAPE, NUM_CLASSES, LabeledArrays


def build_mlp() -> nn.Module:
    """64 -> 128 -> 10 multilayer perceptron (9,610 parameters)."""
    pixels = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(pixels, 128),
        nn.ReLU(),
        nn.Linear(128, NUM_CLASSES),
    )


def build_cnn() -> nn.Module:
    """Two 3x3 convolutions, a 2x2 max-pool and two linear layers (38,282 parameters)."""
    return nn.Sequential(
        nn.Flatten(),  # accepts (B, 8, 8) or (B, 64) alike
        nn.Unflatten(1, (1, *IMAGE_SHAPE)),
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, NUM_CLASSES),
    )


MODELS: dict[str, Callable[[], nn.Module]] = {"mlp": build_mlp, "cnn": build_cnn}


def build_model(name: str, seed: int) -> nn.Module:
    """Build model `name` with weights drawn from `seed`, without touching global RNG state."""
    if name not in MODELS:
        raise ValueError(f"model={name!r} is not known; allowed: {', '.join(MODELS)}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return MODELS[name]()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars in `model`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def evaluate(model: nn.Module, data: LabeledArrays, batch_size: int = 512) -> tuple[float, float]:
    """Return (mean cross-entropy loss in nats, accuracy in [0, 1]) of `model` on `data`."""
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    model.eval()
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == target).sum())
    return loss_sum / len(data), correct / len(data)
