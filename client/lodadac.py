"""One LoDAdaC agent on a client: finish the last gossip step, K local steps, send q_i.

Liu et al., "LoDAdaC", TMLR 2026 (arXiv 2604.09970), Algorithm 1; docs/algorithms.md gives
the equations. The agent keeps, in its Flower Context state between rounds, its model x_i,
its public copy x̂_i, the neighbour mix y_i = Σ_j W_ji x̂_j and its optimizer state (m, u and
AMSGrad's û: client/adaptive.py). Nothing is reset between rounds.

A round of agent i, with the server relaying messages between neighbours:

1. finish the previous round's communication: y_i += Σ_j W_ji q_j over the messages its
   neighbours sent last round (or y_i as the server rebuilt it after an absence), then
   x_i = x_i^{+½} + γ (y_i - x̂_i);
2. K local steps: g at x_i, m and u updated, x_i moves to x_i^{+½} (steps 1-4);
3. q_i = Q(x_i^{+½} - x̂_i) with the run's codec; x̂_i += q_i and y_i += W_ii q_i, with q_i
   exactly as decoded from the bytes sent, so every copy of x̂_i agrees; send q_i.

What the server sends decides step 1 (see strategies/lodadac.py):

* neighbour payloads only — the agent took part last round: mix them in;
* ``neighbor-mix`` y_i — it missed a round: y_i is replaced;
* ``public-copy`` x̂_i with y_i — repair after a lost or refused message: x̂_i and y_i are
  replaced (an agent without state starts from x̂_i with fresh optimizer state);
* ``public-copy`` alone — a fresh start: x_i = x̂_i = y_i = x0, m = u = 0, no mixing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from torch import Tensor, nn

from client.adaptive import AdaptiveState, adaptive_step, init_state, state_from_arrays
from client.adaptive import state_to_arrays as optimizer_arrays
from fedq import wire
from fedq.errors import FedqError
from fedq.local_optimizer import LocalOptimizer
from quant.codec import Codec

# Context-state key of the agent's state (one ArrayRecord: x/, x_hat/, y/ and the optimizer's).
STATE_KEY = "fedq.lodadac"
_MODELS = ("x", "x_hat", "y")


class AgentStateError(FedqError, RuntimeError):
    """The agent cannot continue: its state is missing or does not fit the instruction."""


@dataclass
class AgentState:
    """One agent's state; float32 tensors keyed like the model's state dict."""

    x: dict[str, Tensor]  # x_i; after a round, x_i^{+½} waiting for the next communication
    x_hat: dict[str, Tensor]  # x̂_i, the public copy every neighbour (and the server) holds
    y: dict[str, Tensor]  # y_i = Σ_j W_ji x̂_j
    optimizer: AdaptiveState  # m, u (and û), the local step counter


def load_state(
    state: RecordDict, keys: list[str], optimizer: LocalOptimizer, parameters: list[str]
) -> AgentState | None:
    """The agent's state kept in ``state`` (a Context state), or None if it has none."""
    record = state.array_records.get(STATE_KEY)
    if record is None:
        return None
    arrays = {name: array.numpy() for name, array in record.items()}
    copies = {
        name: {k: torch.from_numpy(arrays.pop(f"{name}/{k}")) for k in keys} for name in _MODELS
    }
    return AgentState(**copies, optimizer=state_from_arrays(arrays, optimizer, parameters))


def save_state(state: RecordDict, agent: AgentState) -> None:
    """Keep ``agent`` in ``state`` (a Context state) until the next round."""
    arrays = {
        f"{name}/{k}": tensor.numpy()
        for name in _MODELS
        for k, tensor in getattr(agent, name).items()
    }
    arrays |= optimizer_arrays(agent.optimizer)
    state[STATE_KEY] = ArrayRecord(
        {name: Array(np.asarray(a, order="C")) for name, a in arrays.items()}
    )


def begin_round(
    agent: AgentState | None,
    content: RecordDict,
    codec: Codec,
    consensus_step: float,
    model: nn.Module,
    optimizer: LocalOptimizer,
) -> AgentState:
    """Step 1 of a round: set up or repair the state, then finish the last communication.

    ``model`` gives the keys and shapes. Raises AgentStateError when the agent has no state
    and the server did not send its public copy.
    """
    keys = list(model.state_dict())
    public = _arrays(content, wire.PUBLIC_COPY, keys)
    mix = _arrays(content, wire.NEIGHBOR_MIX, keys)
    if public is not None and (mix is None or agent is None):
        fresh = init_state(dict(model.named_parameters()), optimizer)
        start = AgentState(_copy(public), _copy(public), _copy(mix or public), fresh)
        return start
    if agent is None:
        raise AgentStateError(
            "this client has no LoDAdaC state (its SuperNode lost it); the server sends it a "
            "fresh copy next round"
        )
    if public is not None:
        agent.x_hat = _copy(public)
    if mix is not None:
        agent.y = _copy(mix)
    else:
        _mix_in_neighbours(agent, content, codec)
    for k, x in agent.x.items():
        x.add_(agent.y[k] - agent.x_hat[k], alpha=consensus_step)
    return agent


def local_steps(
    agent: AgentState,
    model: nn.Module,
    optimizer: LocalOptimizer,
    batches: Iterable[Tensor],
    loss_of: Callable[[Tensor], Tensor],
) -> float:
    """Steps 1-4 once per minibatch: x_i moves to x_i^{+½}; return the mean loss (nats).

    ``loss_of(batch)`` is the loss of ``model`` on a minibatch of example indices (quantized
    layers included); the model's parameters are set to x_i first and x_i is read back
    from them at the end.
    """
    model.load_state_dict(agent.x)
    model.train()
    parameters = dict(model.named_parameters())
    losses = []
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss = loss_of(batch)
        loss.backward()
        adaptive_step(
            parameters, {k: p.grad for k, p in parameters.items()}, agent.optimizer, optimizer
        )
        losses.append(loss.item())
    agent.x = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return float(np.mean(losses))


def end_round(agent: AgentState, codec: Codec, self_weight: float, seed: int) -> bytes:
    """Steps 5-7 on this side: encode q_i = Q(x^{+½} - x̂), apply it to x̂ and y; the bytes."""
    keys = list(agent.x)
    difference = [(agent.x[k] - agent.x_hat[k]).numpy() for k in keys]
    payload = codec.encode(difference, generator=torch.Generator().manual_seed(seed))
    for k, q in zip(keys, codec.decode(payload), strict=True):
        sent = torch.from_numpy(q)
        agent.x_hat[k].add_(sent)
        agent.y[k].add_(sent, alpha=self_weight)
    return payload


def _mix_in_neighbours(agent: AgentState, content: RecordDict, codec: Codec) -> None:
    """y_i += Σ_j W_ji q_j over the neighbours' messages the server relayed."""
    gossip = content.config_records.get(wire.GOSSIP)
    if gossip is None:
        raise AgentStateError(f"a LoDAdaC instruction without a {wire.GOSSIP!r} record")
    weights = list(gossip.get(wire.NEIGHBOR_WEIGHTS, []))
    payloads = list(gossip.get(wire.NEIGHBOR_PAYLOADS, []))
    if len(weights) != len(payloads):
        raise AgentStateError(f"{len(payloads)} relayed messages but {len(weights)} weights")
    keys = list(agent.y)
    for weight, payload in zip(weights, payloads, strict=True):
        for k, q in zip(keys, codec.decode(payload), strict=True):
            agent.y[k].add_(torch.from_numpy(q), alpha=float(weight))


def _arrays(content: RecordDict, key: str, keys: list[str]) -> dict[str, Tensor] | None:
    record = content.array_records.get(key)
    if record is None:
        return None
    if list(record.keys()) != keys:
        raise AgentStateError(f"{key!r} holds {list(record.keys())[:3]}..., not this model's")
    return {k: torch.from_numpy(record[k].numpy()).to(torch.float32) for k in keys}


def _copy(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: t.clone() for k, t in tensors.items()}
