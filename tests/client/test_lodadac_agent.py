"""A LoDAdaC agent (client/lodadac.py) against the algorithm's equations written out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from torch import nn

from client import lodadac
from fedq import wire
from fedq.local_optimizer import LocalOptimizer
from fedq.topology import Topology, adjacency, mixing_matrix
from quant import Codec

N, DIMS, ROWS = 4, {"a": 3, "b": 2}, 6


class Quadratic(nn.Module):
    """Two parameter tensors; the loss of a minibatch is ½‖A_B x - b_B‖² with x = (a, b)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(DIMS["a"]))
        self.b = nn.Parameter(torch.zeros(DIMS["b"]))


def _problem(seed: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Each agent's (A_i, b_i), heterogeneous, and a shared start x0, all of size about 1."""
    rng = np.random.default_rng(seed)
    size = sum(DIMS.values())
    matrices = [rng.normal(0, 0.5, (ROWS, size)) for _ in range(N)]
    targets = [rng.normal(0, 0.5, ROWS) + i * 0.2 for i in range(N)]
    return matrices, targets, rng.normal(0, 0.3, size)


def _split(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"a": x[: DIMS["a"]], "b": x[DIMS["a"] :]}


def _batches(rounds: int, steps: int) -> list[list[list[np.ndarray]]]:
    """batches[round][agent][step]: row indices of each minibatch (fixed, shared)."""
    rng = np.random.default_rng(7)
    return [
        [[rng.choice(ROWS, 3, replace=False) for _ in range(steps)] for _ in range(N)]
        for _ in range(rounds)
    ]


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v.astype(np.float32)) for k, v in arrays.items()})


def _with_agents(optimizer, codec, gamma, w, rounds, steps, matrices, targets, x0):
    """Run the agents through client/lodadac.py, the test relaying messages as the server."""
    states = [RecordDict() for _ in range(N)]
    batches, relay, xs = _batches(rounds, steps), {}, []
    for r in range(rounds):
        sent = {}
        for i in range(N):
            model = Quadratic()
            keys, parameters = list(model.state_dict()), [k for k, _ in model.named_parameters()]
            agent = lodadac.load_state(states[i], keys, optimizer, parameters)
            gossip = ConfigRecord({wire.SELF_WEIGHT: float(w[i, i])})
            content = RecordDict({wire.GOSSIP: gossip})
            if r == 0:
                content[wire.PUBLIC_COPY] = _record(_split(x0))
            else:
                neighbours = [j for j in range(N) if j != i and w[j, i] > 0]
                gossip[wire.NEIGHBOR_WEIGHTS] = [float(w[j, i]) for j in neighbours]
                gossip[wire.NEIGHBOR_PAYLOADS] = [relay[j] for j in neighbours]
            agent = lodadac.begin_round(agent, content, codec, gamma, model, optimizer)
            a, b = torch.tensor(matrices[i], dtype=torch.float32), torch.tensor(targets[i])

            def loss_of(batch, model=model, a=a, b=b):
                x = torch.cat([model.a, model.b])
                return 0.5 * ((a[batch] @ x - b[batch].float()) ** 2).sum()

            steps_i = [torch.from_numpy(batch) for batch in batches[r][i]]
            lodadac.local_steps(agent, model, optimizer, steps_i, loss_of)
            sent[i] = lodadac.end_round(agent, codec, float(w[i, i]), seed=r * N + i)
            lodadac.save_state(states[i], agent)
        relay = sent
    for i in range(N):
        model = Quadratic()
        agent = lodadac.load_state(
            states[i], list(model.state_dict()), optimizer, [k for k, _ in model.named_parameters()]
        )
        xs.append(np.concatenate([agent.x[k].numpy() for k in ("a", "b")]))
    return xs


def _by_hand(optimizer, codec, gamma, w, rounds, steps, matrices, targets, x0):
    """Algorithm 1 in float64 numpy: local steps 1-4, then steps 5-8 at each round's end."""
    b1, b2, delta, lr = optimizer.momentum, optimizer.beta2, optimizer.delta, optimizer.lr
    x = [x0.copy() for _ in range(N)]
    x_hat, y = [x0.copy() for _ in range(N)], [x0.copy() for _ in range(N)]
    m, u, u_hat = ([np.zeros_like(x0) for _ in range(N)] for _ in range(3))
    batches = _batches(rounds, steps)
    for r in range(rounds):
        q = []
        for i in range(N):
            for batch in batches[r][i]:
                a, b = matrices[i][batch], targets[i][batch]
                g = a.T @ (a @ x[i] - b)  # step 1
                m[i] = b1 * m[i] + (1 - b1) * g  # step 2
                x[i] = x[i] - lr * m[i] / (np.sqrt(u[i]) + delta)  # step 3, previous u
                if optimizer.rule == "adam":  # step 4
                    u[i] = b2 * u[i] + (1 - b2) * g**2
                else:  # amsgrad
                    u_hat[i] = b2 * u_hat[i] + (1 - b2) * g**2
                    u[i] = np.maximum(u[i], u_hat[i])
            difference = [v.astype(np.float32) for v in _split(x[i] - x_hat[i]).values()]
            q.append(np.concatenate(codec.decode(codec.encode(difference))).astype(np.float64))
        for i in range(N):  # the communication: steps 5-8
            x_hat[i] = x_hat[i] + q[i]
        for i in range(N):
            y[i] = y[i] + sum(w[j, i] * q[j] for j in range(N))
            x[i] = x[i] + gamma * (y[i] - x_hat[i])
    # The agents finish round R's communication at the start of round R+1; undo step 8 of
    # the last round to compare with the x^{+½} they hold.
    return [x[i] - gamma * (y[i] - x_hat[i]) for i in range(N)]


@pytest.mark.parametrize("rule", ["adam", "amsgrad"])
def test_the_agents_follow_the_equations_of_algorithm_1(rule: str) -> None:
    optimizer = LocalOptimizer(rule=rule, lr=0.01, beta1=0.9, beta2=0.99, eps=0.1)
    w = mixing_matrix(adjacency(Topology("ring"), N))
    args = (optimizer, Codec.from_spec("fp32"), 0.5, w, 4, 3, *_problem(0))
    ours, expected = _with_agents(*args), _by_hand(*args)
    for i in range(N):
        np.testing.assert_allclose(ours[i], expected[i], atol=1e-6, rtol=0)
    assert not np.allclose(ours[0], ours[1]), "the agents moved apart from the shared start"


def test_one_complete_gossip_step_with_gamma_one_averages_the_models() -> None:
    optimizer = LocalOptimizer(rule="adam", lr=0.05, eps=0.1)
    w = mixing_matrix(adjacency(Topology("complete"), N))
    np.testing.assert_allclose(w, np.full((N, N), 1 / N))
    codec = Codec.from_spec("fp32")
    matrices, targets, x0 = _problem(1)
    # One round of local steps, then the start of the next: the agents hold x^{+½} + (ȳ - x̂).
    halves = _with_agents(optimizer, codec, 1.0, w, 1, 3, matrices, targets, x0)
    states = [RecordDict() for _ in range(N)]
    relay = {}
    for i in range(N):
        model = Quadratic()
        content = RecordDict(
            {
                wire.GOSSIP: ConfigRecord({wire.SELF_WEIGHT: float(w[i, i])}),
                wire.PUBLIC_COPY: _record(_split(x0)),
            }
        )
        agent = lodadac.begin_round(None, content, codec, 1.0, model, optimizer)
        agent.x = {k: torch.from_numpy(v.astype(np.float32)) for k, v in _split(halves[i]).items()}
        relay[i] = lodadac.end_round(agent, codec, float(w[i, i]), seed=i)
        lodadac.save_state(states[i], agent)
    average = np.mean(halves, axis=0)
    for i in range(N):
        model = Quadratic()
        agent = lodadac.load_state(states[i], ["a", "b"], optimizer, ["a", "b"])
        gossip = ConfigRecord(
            {
                wire.SELF_WEIGHT: float(w[i, i]),
                wire.NEIGHBOR_WEIGHTS: [float(w[j, i]) for j in range(N) if j != i],
                wire.NEIGHBOR_PAYLOADS: [relay[j] for j in range(N) if j != i],
            }
        )
        agent = lodadac.begin_round(
            agent, RecordDict({wire.GOSSIP: gossip}), codec, 1.0, model, optimizer
        )
        x = np.concatenate([agent.x[k].numpy() for k in ("a", "b")])
        np.testing.assert_allclose(x, average, atol=1e-6)
    assert not np.allclose(halves[0], average)


def test_an_agent_without_state_asks_for_its_public_copy() -> None:
    content = RecordDict({wire.GOSSIP: ConfigRecord({wire.SELF_WEIGHT: 0.5})})
    with pytest.raises(lodadac.AgentStateError, match="has no LoDAdaC state"):
        lodadac.begin_round(
            None, content, Codec.from_spec("fp32"), 0.5, Quadratic(), LocalOptimizer()
        )


def test_a_repair_replaces_the_public_copy_and_the_mix_but_keeps_the_model() -> None:
    optimizer = LocalOptimizer(rule="adam", lr=0.01)
    codec, model = Codec.from_spec("fp32"), Quadratic()
    start = {"a": np.ones(3), "b": np.ones(2)}
    gossip = ConfigRecord({wire.SELF_WEIGHT: 0.5})
    agent = lodadac.begin_round(
        None,
        RecordDict({wire.GOSSIP: gossip, wire.PUBLIC_COPY: _record(start)}),
        codec,
        0.5,
        model,
        optimizer,
    )
    agent.x = {k: v + 1.0 for k, v in agent.x.items()}  # as after local steps: x^{+½} = 2
    agent.optimizer.step = 5
    repair = RecordDict(
        {
            wire.GOSSIP: gossip,
            wire.PUBLIC_COPY: _record({k: v * 0.0 for k, v in start.items()}),
            wire.NEIGHBOR_MIX: _record({k: v * 4.0 for k, v in start.items()}),
        }
    )
    agent = lodadac.begin_round(agent, repair, codec, 0.5, model, optimizer)
    # x = x^{+½} + γ (y - x̂) = 2 + 0.5 * (4 - 0) = 4; the optimizer state is kept.
    np.testing.assert_array_equal(agent.x["a"].numpy(), np.full(3, 4.0, np.float32))
    np.testing.assert_array_equal(agent.x_hat["b"].numpy(), np.zeros(2, np.float32))
    assert agent.optimizer.step == 5
