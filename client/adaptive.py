"""LoDAdaC's local Adam-type step on dicts of tensors, and its state as flat numpy arrays.

Liu et al., "LoDAdaC", TMLR 2026, arXiv 2604.09970: Algorithm 1 steps 1-4 with the
second-moment rules of Table 2. With g the stochastic gradient at x:

    m = β1·m + (1 - β1)·g
    x ← x - lr·m / (sqrt(u) + δ)        (u of the *previous* step; δ outside the square root)
    u ← rule(u, g)

and no bias correction of m or u. The rules for u:

* ``sgd`` (β1 = 0) and ``heavy-ball``: u ≡ 0; no u is kept and the step is lr·m/δ.
* ``adam``: u = β2·u + (1 - β2)·g².
* ``amsgrad``: û = β2·û + (1 - β2)·g², u = max(u, û); û starts at 0 and is kept in ``u_hat``.
* ``adagrad``: u = (1/(t+1))·Σ_{s=0..t} g_s², t counting every local step since the start of
  the run (never restarted per round). Kept as the running mean itself,
  u ← u·t/(t+1) + g²/(t+1), so ``u`` is always the value the next step divides by.
* ``adam-mini``: as adam, but u is ONE scalar for the whole agent, u = β2·u + (1 - β2)·mean(g∘g)
  with the mean over all of the agent's parameters together (the paper's definition, not a
  per-layer scalar). It is kept as a 0-d tensor under the key :data:`AGENT_KEY`.

m, u and û are float32, keyed like the model's parameters, local to the agent, and never reset
between rounds: the client keeps them in Flower's Context state via :func:`state_to_arrays`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from fedq.errors import FedqError
from fedq.local_optimizer import MOMENTUM_RULES, LocalOptimizer

# Key of adam-mini's single per-agent u; torch refuses "" as a parameter name, so no clash.
AGENT_KEY = ""
# Flat array name of the local step counter t (int64, 0-d); tensors are "<field>/<key>".
STEP_NAME = "step"
_FIELDS: tuple[str, ...] = ("m", "u", "u_hat")
_DTYPE = torch.float32


class AdaptiveStateError(FedqError, ValueError):
    """The optimizer state does not fit the parameters, the gradients or the rule."""


@dataclass
class AdaptiveState:
    """One agent's optimizer state: m in the gradient's units, u and u_hat in its square."""

    m: dict[str, Tensor]
    u: dict[str, Tensor]
    u_hat: dict[str, Tensor] = field(default_factory=dict)
    step: int = 0  # local steps taken since the start of the run (t of the next step)


def init_state(params: Mapping[str, Tensor], optimizer: LocalOptimizer) -> AdaptiveState:
    """All-zero state for ``params`` under ``optimizer``'s rule, on the parameters' device."""
    device = next(iter(params.values())).device if params else None
    layout = _layout(optimizer.rule, {k: tuple(p.shape) for k, p in params.items()})
    return _unflatten(
        {name: torch.zeros(shape, dtype=_DTYPE, device=device) for name, shape in layout.items()},
        step=0,
    )


def adaptive_step(
    params: dict[str, Tensor],
    grads: Mapping[str, Tensor],
    state: AdaptiveState,
    optimizer: LocalOptimizer,
) -> None:
    """One local step: move ``params`` in place to x^{+1/2}, update ``state``, step += 1.

    ``grads`` holds g, the stochastic gradient at ``params`` (same keys and shapes). Each
    parameter moves by lr·m / (sqrt(u) + δ) in its own units: about lr once sqrt(u) ~ |g|,
    lr·m/δ while u is 0. Keys, shapes and the state's layout are checked before any arithmetic.
    """
    _check(params, grads, state, optimizer)
    g = {k: grad.detach().to(_DTYPE) for k, grad in grads.items()}
    beta1 = optimizer.momentum
    with torch.no_grad():
        for k, param in params.items():
            m = state.m[k].mul_(beta1).add_(g[k], alpha=1.0 - beta1)
            update = m.mul(optimizer.lr).div_(_denominator(state, k, optimizer.delta))
            param.sub_(update.to(param.dtype))
        _U_RULES[optimizer.rule](state, g, optimizer)
    state.step += 1


def state_to_arrays(state: AdaptiveState) -> dict[str, np.ndarray]:
    """The state as flat name → array (``m/fc1.weight``, ``u/...``, ``step``); copies."""
    arrays = {name: t.detach().cpu().numpy().copy() for name, t in _flatten(state).items()}
    arrays[STEP_NAME] = np.array(state.step, dtype=np.int64)
    return arrays


def state_from_arrays(
    arrays: Mapping[str, np.ndarray],
    optimizer: LocalOptimizer,
    keys: Iterable[str],
    *,
    device: torch.device | str = "cpu",
) -> AdaptiveState:
    """Rebuild what :func:`state_to_arrays` gave, for parameters named ``keys``; exact.

    Raises AdaptiveStateError when an array is missing, extra or misshapen for the rule.
    """
    keys = list(keys)
    missing = [name for name in (STEP_NAME, *(f"m/{k}" for k in keys)) if name not in arrays]
    if missing:
        raise AdaptiveStateError(f"stored optimizer state lacks {missing[:3]}")
    if np.shape(arrays[STEP_NAME]) != ():
        raise AdaptiveStateError(
            f"stored {STEP_NAME!r} must be 0-d, got shape {np.shape(arrays[STEP_NAME])}"
        )
    shapes = {k: tuple(np.shape(arrays[f"m/{k}"])) for k in keys}
    found = {name: tuple(np.shape(a)) for name, a in arrays.items() if name != STEP_NAME}
    _compare(found, _layout(optimizer.rule, shapes), what="stored optimizer state")
    tensors = {
        name: torch.from_numpy(np.array(arrays[name], dtype=np.float32)).to(device)
        for name in found
    }
    return _unflatten(tensors, step=int(np.asarray(arrays[STEP_NAME]).item()))


def _denominator(state: AdaptiveState, key: str, delta: float) -> Tensor | float:
    """sqrt(u) + δ for the tensor ``key``: u per tensor, per agent, or none (then δ)."""
    u = state.u.get(key, state.u.get(AGENT_KEY))
    return delta if u is None else u.sqrt().add_(delta)


def _no_u(state: AdaptiveState, g: Mapping[str, Tensor], optimizer: LocalOptimizer) -> None:
    """sgd and heavy-ball: u ≡ 0, nothing to update."""


def _adam_u(state: AdaptiveState, g: Mapping[str, Tensor], optimizer: LocalOptimizer) -> None:
    """u = β2·u + (1 - β2)·g²."""
    for k, gk in g.items():
        state.u[k].mul_(optimizer.beta2).addcmul_(gk, gk, value=1.0 - optimizer.beta2)


def _amsgrad_u(state: AdaptiveState, g: Mapping[str, Tensor], optimizer: LocalOptimizer) -> None:
    """û = β2·û + (1 - β2)·g², u = max(u, û)."""
    for k, gk in g.items():
        u_hat = state.u_hat[k].mul_(optimizer.beta2).addcmul_(gk, gk, value=1.0 - optimizer.beta2)
        torch.maximum(state.u[k], u_hat, out=state.u[k])


def _adagrad_u(state: AdaptiveState, g: Mapping[str, Tensor], optimizer: LocalOptimizer) -> None:
    """u = mean of g² over all steps so far: u·t/(t+1) + g²/(t+1), t = state.step."""
    t = state.step
    for k, gk in g.items():
        state.u[k].mul_(t / (t + 1)).addcmul_(gk, gk, value=1.0 / (t + 1))


def _adam_mini_u(state: AdaptiveState, g: Mapping[str, Tensor], optimizer: LocalOptimizer) -> None:
    """u = β2·u + (1 - β2)·mean(g∘g), one scalar over every parameter of the agent."""
    u = state.u[AGENT_KEY]
    total = sum(
        ((gk * gk).sum(dtype=torch.float64) for gk in g.values()),
        torch.zeros((), dtype=torch.float64, device=u.device),
    )
    count = max(sum(gk.numel() for gk in g.values()), 1)
    u.mul_(optimizer.beta2).add_((total / count).to(_DTYPE), alpha=1.0 - optimizer.beta2)


_URule = Callable[[AdaptiveState, Mapping[str, Tensor], LocalOptimizer], None]
# Table 2 of the paper: how each rule updates u after the step.
_U_RULES: dict[str, _URule] = {
    "sgd": _no_u,
    "heavy-ball": _no_u,
    "adam": _adam_u,
    "amsgrad": _amsgrad_u,
    "adagrad": _adagrad_u,
    "adam-mini": _adam_mini_u,
}


def _layout(rule: str, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Flat name → shape of every tensor the rule keeps for parameters of ``shapes``."""
    layout = {f"m/{k}": s for k, s in shapes.items()}
    if rule == "adam-mini":
        layout[f"u/{AGENT_KEY}"] = ()
    elif rule not in MOMENTUM_RULES:
        layout |= {f"u/{k}": s for k, s in shapes.items()}
    if rule == "amsgrad":
        layout |= {f"u_hat/{k}": s for k, s in shapes.items()}
    return layout


def _flatten(state: AdaptiveState) -> dict[str, Tensor]:
    return {f"{name}/{k}": t for name in _FIELDS for k, t in getattr(state, name).items()}


def _unflatten(tensors: Mapping[str, Tensor], step: int) -> AdaptiveState:
    parts: dict[str, dict[str, Tensor]] = {name: {} for name in _FIELDS}
    for flat, t in tensors.items():
        name, _, k = flat.partition("/")
        parts[name][k] = t
    return AdaptiveState(**parts, step=step)


def _check(
    params: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    state: AdaptiveState,
    optimizer: LocalOptimizer,
) -> None:
    shapes = {k: tuple(p.shape) for k, p in params.items()}
    _compare({k: tuple(g.shape) for k, g in grads.items()}, shapes, what="gradients")
    found = {name: tuple(t.shape) for name, t in _flatten(state).items()}
    _compare(found, _layout(optimizer.rule, shapes), what=f"{optimizer.rule} optimizer state")


def _compare(
    found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], what: str
) -> None:
    """Raise AdaptiveStateError on the first name missing, extra or of the wrong shape."""
    if missing := [name for name in expected if name not in found]:
        raise AdaptiveStateError(f"{what} lacks {missing[:3]} ({len(missing)} in all)")
    if extra := [name for name in found if name not in expected]:
        raise AdaptiveStateError(f"{what} has unexpected {extra[:3]} ({len(extra)} in all)")
    for name, shape in expected.items():
        if found[name] != shape:
            raise AdaptiveStateError(f"{what}: {name!r} has shape {found[name]}, expected {shape}")
