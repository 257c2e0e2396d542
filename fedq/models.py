"""The models clients train, built from the run's model spec, and their evaluation.

A run names its model and the shape of one example: `model` (`mlp`, `cnn`, `resnet`, or
`python:module:factory` for any torch module), `input-shape` (`F` features, `H,W` one-channel
images, `C,H,W` images) and `num-classes`. The defaults fit the embedded digits (8x8, 10
classes). Every Linear and Conv2d of any of them can be trained quantized (quant/qat.py).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedq.data import LabeledArrays
from fedq.errors import ConfigError

BUILT_IN: tuple[str, ...] = ("mlp", "cnn", "resnet")
PYTHON_PREFIX = "python:"
DEFAULT_INPUT_SHAPE = (8, 8)  # the embedded digits
DEFAULT_NUM_CLASSES = 10


@dataclass(frozen=True)
class ModelSpec:
    """Which model, for examples of `input_shape` in `num_classes` classes."""

    name: str = "mlp"  # a built-in name, or python:module:factory
    input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE  # one example: (F,), (H, W), (C, H, W)
    num_classes: int = DEFAULT_NUM_CLASSES

    def __post_init__(self) -> None:
        if self.name not in BUILT_IN and not _factory_parts(self.name):
            raise ConfigError(
                f"model={self.name!r} is not known; allowed: {', '.join(BUILT_IN)}, "
                "python:module:factory"
            )
        if not 1 <= len(self.input_shape) <= 3 or min(self.input_shape, default=0) < 1:
            raise ConfigError(
                f"input-shape={','.join(map(str, self.input_shape))!r} is not a shape; allowed: "
                "F, H,W or C,H,W with positive integers (e.g. 64, 8,8 or 3,32,32)"
            )
        if self.num_classes < 2:
            raise ConfigError(f"num-classes={self.num_classes} must be >= 2")
        if self.name in ("cnn", "resnet") and len(self.input_shape) == 1:
            raise ConfigError(
                f"model={self.name!r} needs an image input-shape (H,W or C,H,W), "
                f"not {self.input_shape[0]} features; use model='mlp' for features"
            )

    @property
    def channels(self) -> int:
        """Image channels (1 for an `H,W` shape)."""
        return self.input_shape[0] if len(self.input_shape) == 3 else 1

    @property
    def features(self) -> int:
        """Values per example."""
        return math.prod(self.input_shape)


def parse_input_shape(text: str) -> tuple[int, ...]:
    """`"3,32,32"` -> (3, 32, 32); raises ConfigError naming the bad value."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise ConfigError(
            f"input-shape={text!r} is not a shape; allowed: F, H,W or C,H,W with positive "
            "integers (e.g. 64, 8,8 or 3,32,32)"
        ) from None
    return shape


def build_model(spec: ModelSpec, seed: int) -> nn.Module:
    """Build the model of `spec` with weights drawn from `seed`, without touching global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if spec.name in BUILT_IN:
            return _BUILDERS[spec.name](spec)
        return _from_factory(spec)


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


# --- built-in models -------------------------------------------------------------------


def build_mlp(spec: ModelSpec) -> nn.Module:
    """features -> 128 -> classes (digits: 64 -> 128 -> 10, 9,610 parameters)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(spec.features, 128),
        nn.ReLU(),
        nn.Linear(128, spec.num_classes),
    )


def build_cnn(spec: ModelSpec) -> nn.Module:
    """Two 3x3 convolutions, a 2x2 max-pool, two linear layers (digits: 38,282 parameters)."""
    height, width = spec.input_shape[-2:]
    return nn.Sequential(
        nn.Flatten(),  # accepts (B, H, W), (B, C, H, W) or flattened rows alike
        nn.Unflatten(1, (spec.channels, height, width)),
        nn.Conv2d(spec.channels, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (height // 2) * (width // 2), 64),
        nn.ReLU(),
        nn.Linear(64, spec.num_classes),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and a shortcut (a 1x1 convolution when needed)."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False),
            nn.GroupNorm(8, outputs),
            nn.ReLU(),
            nn.Conv2d(outputs, outputs, 3, padding=1, bias=False),
            nn.GroupNorm(8, outputs),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and inputs == outputs
            else nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(body(x) + shortcut(x))."""
        return torch.relu(self.body(x) + self.shortcut(x))


def build_resnet(spec: ModelSpec) -> nn.Module:
    """A small ResNet: a 3x3 stem, three stages of two residual blocks (32, 64, 128 channels).

    GroupNorm instead of BatchNorm: no running statistics, so the state dict holds only
    parameters, which average and compress like any other (BatchNorm's are known to suffer
    under non-IID clients). For 3x32x32 images and 10 classes: 696,234 parameters.
    """
    height, width = spec.input_shape[-2:]
    stages, inputs = [], 32
    for stage, outputs in enumerate((32, 64, 128)):
        stride = 1 if stage == 0 else 2
        stages += [ResidualBlock(inputs, outputs, stride), ResidualBlock(outputs, outputs, 1)]
        inputs = outputs
    return nn.Sequential(
        nn.Flatten(),
        nn.Unflatten(1, (spec.channels, height, width)),
        nn.Conv2d(spec.channels, 32, 3, padding=1, bias=False),
        nn.GroupNorm(8, 32),
        nn.ReLU(),
        *stages,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, spec.num_classes),
    )


_BUILDERS: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "resnet": build_resnet,
}


# --- your own model ----------------------------------------------------------------------


def _factory_parts(name: str) -> tuple[str, str] | None:
    """(module, function) of `python:module:function`, or None."""
    if not name.startswith(PYTHON_PREFIX):
        return None
    module, _, function = name.removeprefix(PYTHON_PREFIX).rpartition(":")
    return (module, function) if module and function.isidentifier() else None


def _from_factory(spec: ModelSpec) -> nn.Module:
    """Call `module.factory(input_shape=..., num_classes=...)`; it must return a torch module."""
    module_name, function_name = _factory_parts(spec.name) or ("", "")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"model={spec.name!r} cannot be loaded: {exc}") from None
    model = factory(input_shape=spec.input_shape, num_classes=spec.num_classes)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model={spec.name!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model
