"""The validated settings of LoDAdaC's local update rule (which rule, lr, β1, β2, δ).

The rules are Table 2 of Liu et al., "LoDAdaC", TMLR 2026, arXiv 2604.09970; client.adaptive
applies them. This module stays free of torch so that the run config can be checked anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedq.errors import ConfigError

RULES: tuple[str, ...] = ("adam", "amsgrad", "adagrad", "adam-mini", "sgd", "heavy-ball")
# Rules with no second moment (u ≡ 0): the step is lr·m/δ throughout.
MOMENTUM_RULES: tuple[str, ...] = ("sgd", "heavy-ball")
# Rules whose step uses β2 (AdaGrad averages g² uniformly instead).
BETA2_RULES: tuple[str, ...] = ("adam", "amsgrad", "adam-mini")

# δ of the momentum rules: with u ≡ 0 the step is lr·m/δ, so δ = 1 makes lr the plain learning
# rate (and K = 1 with sgd exactly CHOCO-SGD).
MOMENTUM_DELTA = 1.0
# δ of the adaptive rules: u = 0 before the first step, which is therefore lr·m/δ; δ = 1e-3
# keeps it near (1 - β1)·|g| for lr = 1e-3, where Adam's usual 1e-8 would move a weight ~1e4.
ADAPTIVE_DELTA = 1e-3


@dataclass(frozen=True)
class LocalOptimizer:
    """A local update rule with its step size lr, β1, β2 and δ = ``eps`` (None: see delta)."""

    rule: str = "adam"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float | None = None

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"rule={self.rule!r} is not known; allowed: {', '.join(RULES)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr={self.lr!r} must be a finite number > 0")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"{name}={value!r} must be in [0, 1)")
        if self.eps is not None and not (math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(f"eps={self.eps!r} must be a finite number > 0 (or unset)")
        if self.rule == "heavy-ball" and self.beta1 == 0:
            raise ConfigError("rule='heavy-ball' needs beta1 > 0 (beta1=0 is rule='sgd')")

    @property
    def delta(self) -> float:
        """δ, added to sqrt(u) in the step's denominator: ``eps`` or the rule's default."""
        if self.eps is not None:
            return self.eps
        return MOMENTUM_DELTA if self.rule in MOMENTUM_RULES else ADAPTIVE_DELTA

    @property
    def momentum(self) -> float:
        """β1 as used: 0 for sgd whatever ``beta1`` says, ``beta1`` otherwise."""
        return 0.0 if self.rule == "sgd" else self.beta1

    def describe(self) -> str:
        """The rule with the constants it uses, e.g. ``adam(lr=0.001, beta1=0.9, ...)``."""
        parts = [f"lr={self.lr:g}"]
        if self.rule != "sgd":
            parts.append(f"beta1={self.momentum:g}")
        if self.rule in BETA2_RULES:
            parts.append(f"beta2={self.beta2:g}")
        parts.append(f"delta={self.delta:g}")
        return f"{self.rule}({', '.join(parts)})"
