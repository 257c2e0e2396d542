"""A Flower Grid that delivers messages to ClientApps in this process, for benchmarks.

Everything but the transport is the real thing: Flower's `Strategy.start` drives the
rounds, the strategy is fedq's, and every message is handled by fedq's `ClientApp` with a
Context per client that lives for the whole run (as a SuperNode keeps it). What is left out
is gRPC and the process per message, which change wall time but not a single number.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Iterable, Mapping
from typing import Any

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedq import wire
from fedq.data import load_digits_split
from fedq.models import build_model, evaluate
from fedq.runconfig import RunConfig
from server.strategy_factory import build_strategy

SERVER_NODE_ID = 1
RUN_ID = 1


class InProcessGrid(Grid):
    """Clients 0..n-1 as node ids 100..100+n-1, each with its own node-config and state."""

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: list[dict[str, Any]],
        run_config: Mapping[str, Any],
    ) -> None:
        # Messages created by strategies carry the process's task identity, as in a
        # ServerApp process.
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = (
            RUN_ID,
            SERVER_NODE_ID,
            1,
        )
        self.client_app = client_app
        self.contexts = {
            100 + i: Context(RUN_ID, 100 + i, dict(cfg), RecordDict(), dict(run_config))
            for i, cfg in enumerate(node_configs)
        }
        self._next_id = 0
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        """Unused: the run is fixed."""

    @property
    def run(self) -> Run:
        """Unused: the run is fixed."""
        raise NotImplementedError("InProcessGrid has no Run object")

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """A message from the server to `dst_node_id`."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """All clients are always connected."""
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Run the ClientApp on each message, in order; keep the replies for the pull."""
        ids = []
        for message in messages:
            self._next_id += 1
            meta = message.metadata
            delivered = Message(
                message.content,
                metadata=Metadata(
                    run_id=RUN_ID,
                    message_id=f"m{self._next_id}",
                    src_node_id=SERVER_NODE_ID,
                    dst_node_id=meta.dst_node_id,
                    reply_to_message_id="",
                    group_id=meta.group_id,
                    created_at=time.time(),
                    ttl=meta.ttl,
                    message_type=meta.message_type,
                ),
            )
            self._replies[delivered.metadata.message_id] = self._run(delivered)
            ids.append(delivered.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to ``message_ids`` (each handed out once)."""
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Run the ClientApp on each message, in order; return the replies."""
        return self.pull_messages(self.push_messages(messages))

    def _run(self, message: Message) -> Message:
        """The ClientApp's reply; a raised exception becomes an error reply, as in Flower."""
        try:
            return self.client_app(message, self.contexts[message.metadata.dst_node_id])
        except Exception as exc:  # every ClientApp failure is reported, as Flower does
            reason = f"{type(exc).__name__}: {exc}"
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)


def run_rounds(
    config: RunConfig,
    grid: Grid,
    rounds: int,
    after_round: Callable[[int], None] | None = None,
) -> list[float]:
    """Run `rounds` rounds of the configured strategy on `grid`; test accuracy after each.

    Index 0 is the initial model. The model, strategy and round instructions are built
    from `config` as the ServerApp builds them. `after_round(server_round)` is called once
    each round is evaluated (round 0 included).
    """
    return list(run_rounds_at(config, grid, rounds, range(rounds + 1), after_round).values())


def run_rounds_at(
    config: RunConfig,
    grid: Grid,
    rounds: int,
    evaluate_at: Container[int],
    after_round: Callable[[int], None] | None = None,
) -> dict[int, float]:
    """Run `rounds` rounds; test accuracy after each round in `evaluate_at` (0: the initial
    model), as {round: accuracy} in round order.

    Evaluating the server's test split costs about as much as a round of a few clients, so
    a long run evaluates only the rounds it scores. `after_round(server_round)` is called
    after every round, evaluated or not (round 0 included).
    """
    model, test = build_model(config.model_spec, config.seed), load_digits_split()[1]
    accuracies: dict[int, float] = {}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        result = None
        if server_round in evaluate_at:
            model.load_state_dict(arrays.to_torch_state_dict())
            accuracies[server_round] = evaluate(model, test)[1]
            result = MetricRecord({"accuracy": accuracies[server_round]})
        if after_round is not None:
            after_round(server_round)
        return result

    build_strategy(config).start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=rounds,
        train_config=ConfigRecord(
            {
                wire.LOCAL_STEPS: config.local_steps,
                wire.BATCH_SIZE: config.batch_size,
                wire.LR: config.lr,
            }
        ),
        evaluate_fn=evaluate_fn,
    )
    return accuracies
