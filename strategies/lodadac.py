"""LoDAdaC: local Adam-type steps with compressed gossip, the server playing the wire.

Liu et al., "LoDAdaC: a unified local training-based decentralized framework with adaptive
gradients and compressed communication", TMLR 2026 (arXiv 2604.09970), Algorithm 1;
docs/algorithms.md gives the equations. CHOCO-SGD is the special case K = 1, plain SGD.

The clients are the agents of a fixed graph with a symmetric, doubly-stochastic mixing
matrix W, built over the nodes connected at the start (ordered by node id) and kept by
client id afterwards. Each agent trains on its own (client/lodadac.py); all that crosses the
network is each agent's compressed message q_i. This strategy relays them: every round it
sends each agent the messages its neighbours sent the round before, with their weights
W_ji, and it keeps every public copy x̂_i (it sees every q_i), so it can evaluate the
average public model (1/n) Σ x̂_i and measure the consensus distance (1/n) Σ ‖x̂_i − x̄‖².
It never sends an average back: the mathematics stays decentralized.

Absences (fedq's rule; the paper has every agent in every round): an agent that sends
nothing in a round counts as q_i = 0 for everyone, so every copy stays consistent. When it
is back, the server sends it y_i = Σ_j W_ji x̂_j rebuilt from its copies instead of the
relayed messages it missed. An agent whose message was lost or refused (its own x̂_i moved,
the server's did not) is sent the server's x̂_i with y_i; an agent that never started, or
lost its state, is sent x̂_i to start from. All of it goes through the metered grid, so
every byte is counted.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fedq import wire
from fedq.topology import Topology, adjacency, check_mixing_matrix, mixing_matrix, spectral_gap
from strategies.replies import RoundReplies, arrays_of
from strategies.seam import Aggregate

log = logging.getLogger(__name__)

# Per-round figure: (1/n) Σ_i ‖x̂_i − x̄‖², squared L2 distance of the public copies from
# their average (the dashboard draws it).
CONSENSUS_FIGURE = "consensus_distance"
# Per-client figure: ‖x̂_i − x̄‖² of that client's public copy.
DISTANCE_FIGURE = "distance_to_average"
MESSAGE_TYPE = f"train.{wire.LODADAC_ACTION}"


class LoDAdaC(FedAvg):
    """LoDAdaC's server: the gossip relay and the keeper of the public copies.

    ``topology`` names the graph, ``seed`` draws a random one. Sampling settings are
    Flower's FedAvg ones (``fraction_train`` of the agents get an instruction each round;
    the others simply sit it out); evaluation messages carry the average public model.
    """

    def __init__(self, *, topology: Topology, seed: int = 0, **fedavg_kwargs: Any) -> None:
        super().__init__(**fedavg_kwargs)
        self.topology = topology
        self.seed = seed
        self._rng = random.Random(seed)  # which agents `fraction_train` samples each round
        self.w: np.ndarray | None = None  # W, (n, n)
        self.node_of: list[int] = []  # agent -> its current node id
        self.agent_of: dict[str, int] = {}  # client id -> agent
        self.public: list[dict[str, np.ndarray]] = []  # x̂_i, float32
        self.relay: dict[int, bytes] = {}  # agent -> its message q_i of the last round
        self.last_round: dict[int, int] = {}  # agent -> last round its message was applied
        self.started: set[int] = set()  # agents that hold state
        self.to_repair: set[int] = set()  # agents whose x̂_i may differ from the server's
        self._first_round: int | None = None
        self._instructed: dict[int, int] = {}  # node -> agent, this round
        self._not_agents: set[int] = set()  # nodes whose client is not the seat's

    # --- server -> clients -------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One instruction per sampled agent: relayed messages, or what it needs to resync."""
        if self.w is None:
            self._build_graph(arrays, grid, server_round)
        config = ConfigRecord({**config, wire.SERVER_ROUND: server_round})
        self._instructed = {self.node_of[a]: a for a in self._sample(grid)}
        return [
            Message(
                content=self._instruction(agent, server_round, config),
                message_type=MESSAGE_TYPE,
                dst_node_id=node,
            )
            for node, agent in self._instructed.items()
        ]

    def _build_graph(self, arrays: ArrayRecord, grid: Grid, server_round: int) -> None:
        """W over the nodes connected now (at least ``min_available_nodes``), by node id."""
        _, connected = sample_nodes(grid, self.min_available_nodes, 0)
        self.node_of = sorted(connected)
        n = len(self.node_of)
        graph = adjacency(self.topology, n, self.seed)
        w = mixing_matrix(graph)
        check_mixing_matrix(w, graph)
        self.w = w
        x0 = {k: v.astype(np.float32) for k, v in arrays_of(arrays).items()}
        self.public = [{k: v.copy() for k, v in x0.items()} for _ in range(n)]
        self._first_round = server_round
        log.info(
            "LoDAdaC: %d agents on a %s, spectral gap %.4f",
            n,
            self.topology.describe(),
            spectral_gap(w),
        )

    def _sample(self, grid: Grid) -> list[int]:
        """Agents whose node is connected, a ``fraction_train`` sample of them (at least
        ``min_train_nodes`` of them where there are that many)."""
        connected = set(grid.get_node_ids())
        self._offer_vacant_seats(connected)
        members = [a for a, node in enumerate(self.node_of) if node in connected]
        wanted = max(int(len(members) * self.fraction_train), self.min_train_nodes, 1)
        return sorted(self._rng.sample(members, min(len(members), wanted)))

    def _offer_vacant_seats(self, connected: set[int]) -> None:
        """Give the seat of an agent whose node is gone to a node the graph does not know.

        A SuperNode that restarts comes back under a new node id (Flower 1.39 gives it a new
        identity unless it authenticates with a fixed key). The newcomer is sent the seat's
        public copy and neighbour mix, so it starts where the agent's copies stand; its reply
        is accepted only if it names the seat's client id (`_bind`).
        """
        vacant = [a for a, node in enumerate(self.node_of) if node not in connected]
        known = set(self.node_of) | self._not_agents
        newcomers = sorted(node for node in connected if node not in known)
        for agent, node in zip(vacant, newcomers, strict=False):
            log.info("LoDAdaC: node %d is offered the seat of agent %d", node, agent)
            self.node_of[agent] = node
            if agent in self.started:
                self.to_repair.add(agent)

    @property
    def mixing(self) -> np.ndarray:
        """W, once the graph is built (at the first round)."""
        if self.w is None:
            raise RuntimeError("LoDAdaC's graph is built at its first configure_train")
        return self.w

    def _instruction(self, agent: int, server_round: int, config: ConfigRecord) -> RecordDict:
        """What ``agent`` needs this round (see the module docstring for the four kinds)."""
        w = self.mixing
        gossip = ConfigRecord({wire.SELF_WEIGHT: float(w[agent, agent])})
        content = RecordDict({wire.CONFIG: config, wire.GOSSIP: gossip})
        if agent not in self.started or agent in self.to_repair:
            content[wire.PUBLIC_COPY] = _record(self.public[agent])
            if server_round != self._first_round:
                content[wire.NEIGHBOR_MIX] = _record(self._mix(agent))
        elif self.last_round.get(agent) == server_round - 1:
            neighbours = [j for j in sorted(self.relay) if j != agent and w[j, agent] > 0]
            gossip[wire.NEIGHBOR_WEIGHTS] = [float(w[j, agent]) for j in neighbours]
            gossip[wire.NEIGHBOR_PAYLOADS] = [self.relay[j] for j in neighbours]
        else:
            content[wire.NEIGHBOR_MIX] = _record(self._mix(agent))
        return content

    def _mix(self, agent: int) -> dict[str, np.ndarray]:
        """y_i = Σ_j W_ji x̂_j from the server's copies (float32)."""
        weights = self.mixing[:, agent]
        return {
            k: sum(
                weights[j] * self.public[j][k].astype(np.float64) for j in np.flatnonzero(weights)
            ).astype(np.float32)
            for k in self.public[agent]
        }

    # --- clients -> server -------------------------------------------------------------

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Not on its own: the messages are encoded, and only a `Link` holds the codec."""
        raise TypeError(
            "LoDAdaC aggregates encoded messages: wrap it as Link(LoDAdaC(...), uplink=codec)"
        )

    def aggregate_updates(self, server_round: int, replies: RoundReplies) -> Aggregate:
        """Apply every accepted q_i to x̂_i; keep the messages for next round's relay."""
        self.relay = {}
        answered: set[int] = set()
        for client, node in replies.nodes.items():
            agent = self._bind(client, node)
            if agent is not None:
                answered.add(agent)
        for update in replies.updates:
            agent = self._instructed.get(update.node)
            if agent is None or agent not in answered:
                continue  # not the client of the seat it was instructed for
            if update.payload is None:
                raise TypeError(
                    "LoDAdaC relays encoded messages: build its Link with an uplink codec"
                )
            for k, x_hat in self.public[agent].items():
                x_hat += update.delta[k]
            self.relay[agent] = update.payload
            self.last_round[agent] = server_round
            self.started.add(agent)
            self.to_repair.discard(agent)
        self._note_lost(replies, answered)
        return self._report(replies)

    def _bind(self, client: str, node: int) -> int | None:
        """The agent ``node`` was instructed as, if ``client`` is that agent's client.

        A seat's first reply binds its client id; later replies must name the same one. A
        node whose client is another agent's moves to that agent's seat for the next round.
        A node that names a stranger for a bound seat is not this agent: its seat goes back
        to being vacant and the node is not offered one again.
        """
        agent = self._instructed.get(node)
        if agent is None:
            return None
        owner = self.agent_of.get(client)
        seat_client = next((c for c, a in self.agent_of.items() if a == agent), None)
        if owner is None and seat_client is None:
            self.agent_of[client] = agent
            return agent
        if owner == agent:
            return agent
        if owner is not None:
            # A known client came back on a new node and was offered another seat (all
            # SuperNodes restarted, e.g. a resumed run): from the next round it sits at its
            # own. This round's message was made for the other seat's copies: not used.
            log.info("LoDAdaC: node %d is client %r: it moves to agent %d", node, client, owner)
            self.node_of[owner] = node
            if self.node_of[agent] == node:
                self.node_of[agent] = -1
            if owner in self.started:
                self.to_repair.add(owner)
            return None
        log.warning(
            "LoDAdaC: node %d answered as client %r, not as agent %d's client %r",
            node,
            client,
            agent,
            seat_client,
        )
        self._not_agents.add(node)
        self.node_of[agent] = -1  # vacant until a newcomer is offered the seat
        return None

    def _note_lost(self, replies: RoundReplies, answered: set[int]) -> None:
        """Agents whose x̂_i may have moved without the server seeing it need a repair."""
        refused = {self.agent_of.get(r.client) for r in replies.rejected}
        failed = {self._instructed.get(node) for node, _ in replies.failed}
        silent = set(self._instructed.values()) - answered
        for agent in (refused | failed | silent) - {None}:
            if agent in self.started:
                self.to_repair.add(agent)

    def _report(self, replies: RoundReplies) -> Aggregate:
        """The average public model, the consensus distance, the round's metrics."""
        average = {
            k: np.mean([x_hat[k].astype(np.float64) for x_hat in self.public], axis=0)
            for k in self.public[0]
        }
        distances = [
            sum(float(np.sum((x_hat[k] - average[k]) ** 2)) for k in average)
            for x_hat in self.public
        ]
        clients = {agent: client for client, agent in self.agent_of.items()}
        metrics: dict[str, float | int] = {"participants": len(replies.updates)}
        if replies.updates:
            metrics[wire.TRAIN_LOSS] = float(np.mean([u.train_loss for u in replies.updates]))
        return Aggregate(
            arrays=ArrayRecord({k: Array(v.astype(np.float32)) for k, v in average.items()}),
            metrics=MetricRecord(metrics),
            figures={CONSENSUS_FIGURE: float(np.mean(distances))},
            client_figures={
                clients[a]: {DISTANCE_FIGURE: d} for a, d in enumerate(distances) if a in clients
            },
        )

    # --- the rest ------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Checkpointable state: the graph, every public copy, the pending relay."""
        return {
            "topology": self.topology.describe(),
            "w": None if self.w is None else self.w.copy(),
            "node_of": list(self.node_of),
            "agent_of": dict(self.agent_of),
            "public": [{k: v.copy() for k, v in x.items()} for x in self.public],
            "relay": dict(self.relay),
            "last_round": dict(self.last_round),
            "started": sorted(self.started),
            "to_repair": sorted(self.to_repair),
            "first_round": self._first_round,
            "not_agents": sorted(self._not_agents),
            "rng": self._rng.getstate(),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what `state()` returned (for the same topology)."""
        if state["topology"] != self.topology.describe():
            raise ValueError(
                f"checkpoint of topology={state['topology']!r}, not {self.topology.describe()!r}"
            )
        self.w = None if state["w"] is None else np.asarray(state["w"], np.float64)
        self.node_of = [int(n) for n in state["node_of"]]
        self.agent_of = {str(c): int(a) for c, a in state["agent_of"].items()}
        self.public = [
            {k: np.asarray(v, np.float32) for k, v in x.items()} for x in state["public"]
        ]
        self.relay = {int(a): bytes(p) for a, p in state["relay"].items()}
        self.last_round = {int(a): int(r) for a, r in state["last_round"].items()}
        self.started = {int(a) for a in state["started"]}
        self.to_repair = {int(a) for a in state["to_repair"]}
        self._first_round = state["first_round"]
        self._not_agents = {int(n) for n in state["not_agents"]}
        self._rng.setstate(state["rng"])

    def forget_client_state(self) -> None:
        """Every agent lost x_i, x̂_i, y_i and its optimizer state: each one that had
        started is repaired from the server's x̂_i and y_i when it next takes part."""
        self.to_repair |= self.started

    def summary(self) -> None:
        """Log the configuration, Flower-style."""
        super().summary()
        log.info("\t└──> LoDAdaC: topology %s, seed %d", self.topology.describe(), self.seed)


def _record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})
