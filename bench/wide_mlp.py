"""Models for bench/shaped_links.py, loaded by the run as `model = "python:wide_mlp:FACTORY"`.

The ServerApp and every ClientApp import this module by name, so the benchmark puts bench/ on
their PYTHONPATH. It imports torch alone, nothing of the benchmark.
"""

from __future__ import annotations

import math

from torch import nn

WIDTH = 1024  # hidden units of `wide_mlp`
TINY_WIDTH = 16  # hidden units of `tiny_mlp` (the harness test)


def _mlp(input_shape: tuple[int, ...], num_classes: int, width: int) -> nn.Module:
    features = math.prod(input_shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(features, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, num_classes),
    )


def wide_mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """features -> 1024 -> 1024 -> classes; on digits 64 -> 1024 -> 1024 -> 10: 1,126,410
    parameters (4.5 MB as float32)."""
    return _mlp(input_shape, num_classes, WIDTH)


def tiny_mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """features -> 16 -> 16 -> classes (digits: 1,482 parameters), for the harness test."""
    return _mlp(input_shape, num_classes, TINY_WIDTH)
