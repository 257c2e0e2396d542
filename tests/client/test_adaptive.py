"""LoDAdaC's local step (client.adaptive) against hand-written equations, and its settings."""

import dataclasses

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from torch import nn

from client.adaptive import (
    AGENT_KEY,
    AdaptiveState,
    AdaptiveStateError,
    adaptive_step,
    init_state,
    state_from_arrays,
    state_to_arrays,
)
from fedq.errors import ConfigError
from fedq.local_optimizer import RULES, LocalOptimizer

# f(x) = ½‖A x - b‖² over 7 parameters split into two named tensors; x stays below ~1 in
# magnitude, so float32 rounding (the state's dtype) stays well under the 1e-6 tolerance.
SHAPES = {"layer.weight": (2, 2), "layer.bias": (3,)}
SIZE = 7
_RNG = np.random.default_rng(20260)
A = 0.5 * _RNG.normal(size=(9, SIZE))
B = A @ (0.3 * _RNG.normal(size=SIZE)) + 0.1 * _RNG.normal(size=9)
X0 = 0.3 * _RNG.normal(size=SIZE)
STEPS = 30
# Gradient noise per step; its scale varies so that AMSGrad's û rises and falls.
NOISE = _RNG.normal(size=(STEPS, SIZE)) * np.where(np.arange(STEPS) % 7 < 2, 3.0, 0.3)[:, None]


def _gradient(x: np.ndarray, t: int) -> np.ndarray:
    """∇f at x plus step t's noise (float64)."""
    return A.T @ (A @ x - B) + NOISE[t % STEPS]


def _split(flat: np.ndarray) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for key, shape in SHAPES.items():
        size = int(np.prod(shape))
        out[key] = torch.from_numpy(flat[start : start + size].reshape(shape).astype(np.float32))
        start += size
    return out


def _join(tensors: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([tensors[key].double().numpy().ravel() for key in SHAPES])


def _run(params, state, optimizer, steps, first_t=0) -> list[np.ndarray]:
    """``steps`` adaptive steps on the quadratic; x (float64) after each."""
    trajectory = []
    for t in range(first_t, first_t + steps):
        adaptive_step(params, _split(_gradient(_join(params), t)), state, optimizer)
        trajectory.append(_join(params))
    return trajectory


def _reference(optimizer: LocalOptimizer, steps: int) -> list[np.ndarray]:
    """Algorithm 1 steps 1-4 and Table 2 written out in float64 numpy, one rule at a time."""
    rule, lr, beta2, delta = optimizer.rule, optimizer.lr, optimizer.beta2, optimizer.delta
    beta1 = 0.0 if rule == "sgd" else optimizer.beta1
    x, m = X0.copy(), np.zeros(SIZE)
    u, u_hat, g2_sum = np.zeros(SIZE), np.zeros(SIZE), np.zeros(SIZE)
    trajectory = []
    for t in range(steps):
        g = _gradient(x, t)
        m = beta1 * m + (1 - beta1) * g
        x = x - lr * m / (np.sqrt(u) + delta)
        if rule == "adam":
            u = beta2 * u + (1 - beta2) * g**2
        elif rule == "amsgrad":
            u_hat = beta2 * u_hat + (1 - beta2) * g**2
            u = np.maximum(u, u_hat)
        elif rule == "adagrad":
            g2_sum = g2_sum + g**2
            u = g2_sum / (t + 1)
        elif rule == "adam-mini":
            u = np.full(SIZE, beta2 * u[0] + (1 - beta2) * np.mean(g**2))
        else:
            assert rule in ("sgd", "heavy-ball")
        trajectory.append(x)
    return trajectory


def _start(optimizer: LocalOptimizer) -> tuple[dict[str, torch.Tensor], AdaptiveState]:
    params = _split(X0)
    return params, init_state(params, optimizer)


OPTIMIZERS = [
    LocalOptimizer("sgd", lr=0.05),
    LocalOptimizer("sgd", lr=0.05, beta1=0.9),  # beta1 is ignored by sgd
    LocalOptimizer("heavy-ball", lr=0.05, beta1=0.8),
    LocalOptimizer("heavy-ball", lr=0.05, beta1=0.5, eps=0.5),
    LocalOptimizer("adam"),
    LocalOptimizer("adam", lr=0.01, beta1=0.5, beta2=0.9, eps=0.1),
    LocalOptimizer("amsgrad", beta2=0.5),
    LocalOptimizer("adagrad"),
    LocalOptimizer("adagrad", lr=0.01, beta1=0.0, eps=0.1),
    LocalOptimizer("adam-mini"),
    LocalOptimizer("adam-mini", lr=0.003, beta2=0.8),
]


def test_every_rule_is_covered():
    assert {optimizer.rule for optimizer in OPTIMIZERS} == set(RULES)


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=LocalOptimizer.describe)
def test_matches_the_equations_written_out(optimizer):
    params, state = _start(optimizer)
    got = _run(params, state, optimizer, STEPS)
    expected = _reference(optimizer, STEPS)
    for t, (x, x_ref) in enumerate(zip(got, expected, strict=True)):
        np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-6, err_msg=f"step {t}")
    assert state.step == STEPS
    # The trajectory really moved: the test compares more than rounding noise.
    assert np.abs(expected[-1] - X0).max() > 0.05


def test_first_adam_step_is_lr_m_over_delta():
    optimizer = LocalOptimizer("adam", lr=1e-3)
    params, state = _start(optimizer)
    g = _split(_gradient(X0, 0))
    adaptive_step(params, g, state, optimizer)
    for key, x0 in _split(X0).items():
        m = (1 - optimizer.beta1) * g[key]
        torch.testing.assert_close(params[key], x0 - 1e-3 * m / 1e-3, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(state.u[key], (1 - optimizer.beta2) * g[key] ** 2)


def test_sgd_with_delta_one_is_the_plain_gradient_step():
    optimizer = LocalOptimizer("sgd", lr=0.1, beta1=0.9)
    assert optimizer.delta == 1.0
    params, state = _start(optimizer)
    for t in range(10):
        before = {key: p.clone() for key, p in params.items()}
        g = _split(_gradient(_join(params), t))
        adaptive_step(params, g, state, optimizer)
        for key in SHAPES:
            torch.testing.assert_close(params[key], before[key] - 0.1 * g[key], rtol=0, atol=0)
    assert state.u == {} and state.u_hat == {}


def test_heavy_ball_is_classic_momentum_with_dampening():
    optimizer = LocalOptimizer("heavy-ball", lr=0.05, beta1=0.7)
    params, state = _start(optimizer)
    x, v = _split(X0), {key: torch.zeros(shape) for key, shape in SHAPES.items()}
    for t in range(10):
        g = _split(_gradient(_join(params), t))
        adaptive_step(params, g, state, optimizer)
        for key in SHAPES:
            v[key] = 0.7 * v[key] + (1 - 0.7) * g[key]
            x[key] = x[key] - 0.05 * v[key]
            # add_(g, alpha=) may round differently from a separate product: an ulp or two.
            torch.testing.assert_close(params[key], x[key], rtol=1e-6, atol=1e-7)


def test_amsgrad_u_never_decreases():
    optimizer = LocalOptimizer("amsgrad", lr=0.01, beta2=0.5)
    params, state = _start(optimizer)
    hat_fell = False
    for t in range(STEPS):
        u_before = {key: u.clone() for key, u in state.u.items()}
        hat_before = {key: u.clone() for key, u in state.u_hat.items()}
        adaptive_step(params, _split(_gradient(_join(params), t)), state, optimizer)
        for key in SHAPES:
            assert (state.u[key] >= u_before[key]).all()
            assert (state.u[key] >= state.u_hat[key]).all()
            hat_fell |= bool((state.u_hat[key] < hat_before[key]).any())
    assert hat_fell  # û did fall, so the max is what kept u up


def test_adagrad_step_count_survives_a_round_trip():
    optimizer = LocalOptimizer("adagrad", lr=0.05)
    straight_params, straight = _start(optimizer)
    _run(straight_params, straight, optimizer, 20)

    params, state = _start(optimizer)
    _run(params, state, optimizer, 10)
    arrays = state_to_arrays(state)
    restored = state_from_arrays(arrays, optimizer, SHAPES)
    assert restored.step == 10
    _run(params, restored, optimizer, 10, first_t=10)
    for key in SHAPES:
        assert torch.equal(params[key], straight_params[key])
        assert torch.equal(restored.u[key], straight.u[key])

    # Restarting t at each round would give a different u (and x): the test can tell.
    params, state = _start(optimizer)
    _run(params, state, optimizer, 10)
    state.step = 0
    _run(params, state, optimizer, 10, first_t=10)
    assert not torch.equal(params["layer.bias"], straight_params["layer.bias"])


def test_adagrad_u_is_the_mean_square_gradient():
    optimizer = LocalOptimizer("adagrad", lr=0.05)
    params, state = _start(optimizer)
    squares = []
    for t in range(3):
        g = _split(_gradient(_join(params), t))
        squares.append({key: value**2 for key, value in g.items()})
        adaptive_step(params, g, state, optimizer)
        for key in SHAPES:
            mean = sum(s[key] for s in squares) / len(squares)
            torch.testing.assert_close(state.u[key], mean, rtol=1e-6, atol=0)


def test_adam_mini_keeps_one_scalar_per_agent():
    optimizer = LocalOptimizer("adam-mini", lr=0.01, beta2=0.9)
    params, state = _start(optimizer)
    g = _split(_gradient(X0, 0))
    adaptive_step(params, g, state, optimizer)
    assert list(state.u) == [AGENT_KEY] and state.u[AGENT_KEY].shape == ()
    mean_square = np.mean(np.concatenate([v.double().numpy().ravel() for v in g.values()]) ** 2)
    assert state.u[AGENT_KEY].item() == pytest.approx(0.1 * mean_square, rel=1e-6)


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=LocalOptimizer.describe)
def test_state_round_trips_exactly_through_an_array_record(optimizer):
    params, state = _start(optimizer)
    _run(params, state, optimizer, 5)
    arrays = state_to_arrays(state)
    assert arrays["step"].dtype == np.int64 and arrays["step"].shape == ()
    assert all(a.dtype == np.float32 for name, a in arrays.items() if name != "step")
    record = ArrayRecord({name: Array(a) for name, a in arrays.items()})
    restored = state_from_arrays({k: v.numpy() for k, v in record.items()}, optimizer, SHAPES)
    assert restored.step == state.step == 5
    for name in ("m", "u", "u_hat"):
        original, back = getattr(state, name), getattr(restored, name)
        assert original.keys() == back.keys()
        assert all(torch.equal(original[k], back[k]) for k in original)
        assert all(t.dtype == torch.float32 for t in back.values())


def test_array_names_per_rule():
    def names(rule: str) -> set[str]:
        optimizer = LocalOptimizer(rule, beta1=0.9)
        return set(state_to_arrays(init_state(_split(X0), optimizer)))

    m = {"m/layer.weight", "m/layer.bias", "step"}
    u = {"u/layer.weight", "u/layer.bias"}
    assert names("sgd") == names("heavy-ball") == m
    assert names("adam") == names("adagrad") == m | u
    assert names("amsgrad") == m | u | {"u_hat/layer.weight", "u_hat/layer.bias"}
    assert names("adam-mini") == m | {f"u/{AGENT_KEY}"}


def test_saved_arrays_are_copies():
    optimizer = LocalOptimizer("adam")
    params, state = _start(optimizer)
    arrays = state_to_arrays(state)
    _run(params, state, optimizer, 2)
    assert not arrays["m/layer.bias"].any() and arrays["step"] == 0


def test_works_on_a_module_in_place():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = LocalOptimizer("adam", lr=0.01)
    params = dict(model.named_parameters())
    state = init_state(params, optimizer)
    before = model.weight.detach().clone()
    model(torch.ones(4, 3)).square().sum().backward()
    adaptive_step(params, {k: p.grad for k, p in params.items()}, state, optimizer)
    assert not torch.equal(model.weight, before)
    assert model.weight.requires_grad and model.weight.is_leaf


def test_gradients_must_match_the_parameters():
    optimizer = LocalOptimizer("adam")
    params, state = _start(optimizer)
    g = _split(_gradient(X0, 0))
    with pytest.raises(AdaptiveStateError, match=r"gradients lacks \['layer.bias'\]"):
        adaptive_step(params, {"layer.weight": g["layer.weight"]}, state, optimizer)
    with pytest.raises(AdaptiveStateError, match=r"gradients: 'layer\.bias' has shape"):
        adaptive_step(params, {**g, "layer.bias": torch.zeros(4)}, state, optimizer)
    assert state.step == 0 and torch.equal(params["layer.bias"], _split(X0)["layer.bias"])


def test_state_must_fit_the_rule():
    params, state = _start(LocalOptimizer("adam"))
    g = _split(_gradient(X0, 0))
    with pytest.raises(AdaptiveStateError, match=r"adam-mini optimizer state lacks \['u/'\]"):
        adaptive_step(params, g, state, LocalOptimizer("adam-mini"))
    with pytest.raises(AdaptiveStateError, match="sgd optimizer state has unexpected"):
        adaptive_step(params, g, state, LocalOptimizer("sgd"))


def test_stored_state_is_checked():
    optimizer = LocalOptimizer("amsgrad")
    arrays = state_to_arrays(init_state(_split(X0), optimizer))
    with pytest.raises(AdaptiveStateError, match=r"lacks \['step'\]"):
        state_from_arrays({k: v for k, v in arrays.items() if k != "step"}, optimizer, SHAPES)
    with pytest.raises(AdaptiveStateError, match=r"lacks \['u_hat/layer.weight'"):
        without_u_hat = {k: v for k, v in arrays.items() if not k.startswith("u_hat/")}
        state_from_arrays(without_u_hat, optimizer, SHAPES)
    with pytest.raises(AdaptiveStateError, match=r"has unexpected \['m/extra'\]"):
        state_from_arrays({**arrays, "m/extra": np.zeros(2)}, optimizer, SHAPES)
    with pytest.raises(AdaptiveStateError, match=r"'u/layer\.bias' has shape"):
        state_from_arrays({**arrays, "u/layer.bias": np.zeros(4)}, optimizer, SHAPES)


# ---- LocalOptimizer: the validated settings ----


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"rule": "lamb"},
            "rule='lamb' is not known; allowed: adam, amsgrad, adagrad, adam-mini, sgd, heavy-ball",
        ),
        ({"lr": 0.0}, "lr=0.0 must be a finite number > 0"),
        ({"lr": -1e-3}, "lr=-0.001 must be a finite number > 0"),
        ({"lr": float("nan")}, "lr=nan must be a finite number > 0"),
        ({"lr": float("inf")}, "lr=inf must be a finite number > 0"),
        ({"beta1": 1.0}, "beta1=1.0 must be in [0, 1)"),
        ({"beta1": -0.1}, "beta1=-0.1 must be in [0, 1)"),
        ({"beta2": 1.0}, "beta2=1.0 must be in [0, 1)"),
        ({"beta2": float("nan")}, "beta2=nan must be in [0, 1)"),
        ({"eps": 0.0}, "eps=0.0 must be a finite number > 0 (or unset)"),
        ({"eps": -1.0}, "eps=-1.0 must be a finite number > 0 (or unset)"),
        (
            {"rule": "heavy-ball", "beta1": 0.0},
            "rule='heavy-ball' needs beta1 > 0 (beta1=0 is rule='sgd')",
        ),
    ],
)
def test_local_optimizer_refuses_bad_settings_in_one_line(kwargs, message):
    with pytest.raises(ConfigError) as caught:
        LocalOptimizer(**kwargs)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("rule", "delta"),
    [
        ("sgd", 1.0),
        ("heavy-ball", 1.0),
        ("adam", 1e-3),
        ("amsgrad", 1e-3),
        ("adagrad", 1e-3),
        ("adam-mini", 1e-3),
    ],
)
def test_delta_defaults(rule, delta):
    assert LocalOptimizer(rule).delta == delta
    assert LocalOptimizer(rule, eps=0.25).delta == 0.25


def test_momentum_and_description():
    assert LocalOptimizer("sgd", beta1=0.9).momentum == 0.0
    assert LocalOptimizer("sgd", beta1=0.0).momentum == 0.0
    assert LocalOptimizer("heavy-ball", beta1=0.8).momentum == 0.8
    assert LocalOptimizer().momentum == 0.9
    assert LocalOptimizer().describe() == "adam(lr=0.001, beta1=0.9, beta2=0.999, delta=0.001)"
    assert LocalOptimizer("sgd", lr=0.1).describe() == "sgd(lr=0.1, delta=1)"
    assert (
        LocalOptimizer("adagrad", lr=0.01).describe() == "adagrad(lr=0.01, beta1=0.9, delta=0.001)"
    )
    assert LocalOptimizer("heavy-ball", eps=0.5).describe() == (
        "heavy-ball(lr=0.001, beta1=0.9, delta=0.5)"
    )


def test_local_optimizer_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        LocalOptimizer().lr = 1.0  # type: ignore[misc]
