"""End of every round: evaluate the global model, combine it with the traffic, log one record."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, MetricRecord
from torch import nn

from fedq import wire
from fedq.data import LabeledArrays
from fedq.models import evaluate
from fedq.run_directory import Checkpoint, RunDirectory
from server.metering import NodeTraffic, TrafficLedger
from server.resume import rng_state
from strategies.replies import ClientEvaluation
from strategies.seam import ReportsEvaluation, ReportsOutcome, Stateful


class RoundRecorder:
    """Flower's `evaluate_fn`: called with round 0 (initial model) and after each round.

    Each call evaluates the global model — on the server's test data when it has some
    (central), otherwise by the clients' evaluations on their validation shares, which the
    strategy reports for the round (federated; none for round 0) — takes the round's traffic
    from the ledger and appends one record to the run directory's rounds.jsonl.
    """

    def __init__(
        self,
        model: nn.Module,
        test_data: LabeledArrays | None,
        ledger: TrafficLedger,
        run_dir: RunDirectory,
        num_parameters: int,
        strategy: ReportsOutcome | ReportsEvaluation | Stateful | None = None,
        fp32_message_bytes: int = 0,
        on_record: Callable[[dict[str, Any]], None] | None = None,
        run_id: str = "",
    ) -> None:
        self.model = model
        self.test_data = test_data
        self.ledger = ledger
        self.run_dir = run_dir
        self.num_parameters = num_parameters
        self.strategy = strategy
        # Bytes of one dense fp32 model message: the yardstick compressed rounds are
        # compared with (a dense fp32 FedAvg round costs this per client each way).
        self.fp32_message_bytes = fp32_message_bytes
        self.on_record = on_record
        self.run_id = run_id  # written into every checkpoint: a resumed run reports under it
        self._cum_fp32_up = 0
        self._cum_fp32_down = 0
        self.records: list[dict[str, Any]] = []
        self._started = time.monotonic()
        self._cum_up = 0
        self._cum_down = 0
        self._cum_payload_up = 0
        self._cum_payload_down = 0
        self._cum_updates = 0  # participant updates received so far
        self._elapsed_before = 0.0  # seconds the run trained before it was resumed

    def continue_from(self, records: list[dict[str, Any]]) -> None:
        """Carry on after `records` (a resumed run's earlier rounds): the cumulative bytes
        and the elapsed time go on from the last of them."""
        self.records = list(records)
        if not records:
            return
        last = records[-1]
        self._cum_up, self._cum_down = last["cum_bytes_up"], last["cum_bytes_down"]
        self._cum_payload_up = last["cum_payload_bytes_up"]
        self._cum_payload_down = last["cum_payload_bytes_down"]
        self._cum_fp32_up = last["cum_fp32_bytes_up"]
        self._cum_fp32_down = last["cum_fp32_bytes_down"]
        self._cum_updates = sum(len(r["participants"]) for r in records if r["round"] > 0)
        self._elapsed_before = float(last["elapsed_seconds"])

    @property
    def evaluation_kind(self) -> str:
        """ "central" (the server's test data) or "federated" (the clients' validation shares)."""
        return "central" if self.test_data is not None else "federated"

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Evaluate `arrays`, log the round; return the central metrics to Flower."""
        loss, accuracy, clients = self._evaluate(server_round, arrays)
        traffic = self.ledger.take()
        record = self._round_record(
            server_round, accuracy, loss, traffic, self._accepted(server_round, traffic)
        )
        record["evaluation"] = self.evaluation_kind
        if server_round > 0:
            record["strategy"] = self._strategy_figures()
            _attach_client_figures(record)
        _attach_evaluations(record, clients)
        self.run_dir.append_round(record)
        self.run_dir.save_checkpoint(
            Checkpoint(
                round=server_round,
                model=arrays.to_torch_state_dict(),
                strategy=self._strategy_state(),
                rng=rng_state(),
                run_id=self.run_id,
            )
        )
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)
        if accuracy is None or loss is None:
            return None
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    def _accepted(self, server_round: int, traffic: dict[int, NodeTraffic]) -> list[int]:
        """Nodes whose update the strategy accepted this round (the traffic's train replies
        when the strategy does not say): rejected replies are no participants."""
        if server_round > 0 and isinstance(self.strategy, ReportsOutcome):
            outcome = self.strategy.round_outcome
            if outcome is not None:
                return sorted(outcome.nodes[c] for c in outcome.participants if c in outcome.nodes)
        return sorted(n for n, t in traffic.items() if t.train_metrics is not None)

    def _evaluate(
        self, server_round: int, arrays: ArrayRecord
    ) -> tuple[float | None, float | None, list[ClientEvaluation]]:
        """(loss, accuracy, per-client evaluations) of the round's model."""
        if self.test_data is not None:
            self.model.load_state_dict(arrays.to_torch_state_dict())
            loss, accuracy = evaluate(self.model, self.test_data)
            return loss, accuracy, []
        if not isinstance(self.strategy, ReportsEvaluation):
            return None, None, []
        result = self.strategy.federated_evaluation
        if result is None or result.server_round != server_round:
            return None, None, []
        return result.loss, result.accuracy, result.clients

    def _strategy_figures(self) -> dict[str, Any]:
        """What the strategy reports of the round: clients, rejections, its own figures."""
        if not isinstance(self.strategy, ReportsOutcome):
            return {}
        outcome = self.strategy.round_outcome
        return outcome.to_dict() if outcome is not None else {}

    def _strategy_state(self) -> dict[str, Any]:
        return self.strategy.state() if isinstance(self.strategy, Stateful) else {}

    @property
    def elapsed_seconds(self) -> float:
        """Seconds the run has trained: since the recorder was created (the start of the
        strategy), plus, for a resumed run, what it trained before."""
        return self._elapsed_before + time.monotonic() - self._started

    def _round_record(
        self,
        server_round: int,
        accuracy: float | None,
        loss: float | None,
        traffic: dict[int, NodeTraffic],
        participants: list[int],
    ) -> dict[str, Any]:
        bytes_up = sum(t.bytes_up for t in traffic.values())
        bytes_down = sum(t.bytes_down for t in traffic.values())
        payload_up = sum(t.payload_up for t in traffic.values())
        payload_down = sum(t.payload_down for t in traffic.values())
        self._cum_up += bytes_up
        self._cum_down += bytes_down
        self._cum_payload_up += payload_up
        self._cum_payload_down += payload_down
        self._cum_updates += len(participants)
        fp32_up = len(participants) * self.fp32_message_bytes
        fp32_down = sum(t.bytes_down > 0 for t in traffic.values()) * self.fp32_message_bytes
        self._cum_fp32_up += fp32_up
        self._cum_fp32_down += fp32_down
        return {
            "time": time.time(),
            "fp32_bytes_up": fp32_up,
            "fp32_bytes_down": fp32_down,
            "cum_fp32_bytes_up": self._cum_fp32_up,
            "cum_fp32_bytes_down": self._cum_fp32_down,
            "round": server_round,
            "accuracy": accuracy,
            "loss": loss,
            "train_loss": _weighted_train_loss(
                {n: traffic[n] for n in participants if n in traffic}
            ),
            "participants": participants,
            "failures": [
                {"node": n, "reason": reason} for n, t in traffic.items() for reason in t.errors
            ],
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "cum_bytes_up": self._cum_up,
            "cum_bytes_down": self._cum_down,
            "payload_bytes_up": payload_up,
            "payload_bytes_down": payload_down,
            "cum_payload_bytes_up": self._cum_payload_up,
            "cum_payload_bytes_down": self._cum_payload_down,
            # Whole messages, per participant update and model parameter.
            "uplink_bits_per_param": (
                8 * bytes_up / (len(participants) * self.num_parameters) if participants else None
            ),
            "uplink_payload_bits_per_param": (
                8 * payload_up / (len(participants) * self.num_parameters) if participants else None
            ),
            "cum_uplink_bits_per_param": (
                8 * self._cum_up / (self._cum_updates * self.num_parameters)
                if self._cum_updates
                else None
            ),
            "uplink_ratio_to_fp32": (
                self._cum_fp32_up / self._cum_up if self._cum_up and self._cum_fp32_up else None
            ),
            "clients": {
                str(n): {
                    "bytes_up": t.bytes_up,
                    "bytes_down": t.bytes_down,
                    "payload_bytes_up": t.payload_up,
                    "payload_bytes_down": t.payload_down,
                    "num_examples": _metric(t, wire.NUM_EXAMPLES),
                    "train_loss": _metric(t, wire.TRAIN_LOSS),
                }
                for n, t in sorted(traffic.items())
            },
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }


def _attach_client_figures(record: dict[str, Any]) -> None:
    """Copy the strategy's figures onto the record: per round, and per client by node.

    Every node of the round that the strategy knows also gets its client's stable
    `client_id`.
    """
    outcome = record.get("strategy") or {}
    nodes = outcome.get("nodes") or {}
    record["figures"] = dict(outcome.get("figures") or {})
    for client, node in nodes.items():
        if str(node) in record["clients"]:
            record["clients"][str(node)]["client_id"] = str(client)
    for client, figures in (outcome.get("client_figures") or {}).items():
        entry = record["clients"].setdefault(str(nodes.get(client, client)), {})
        entry.setdefault("figures", {}).update(figures)
    record["non_participants"] = sorted(
        int(nodes[c]) for c in outcome.get("absent", ()) if c in nodes
    )
    record["rejected"] = [
        {"node": int(r["node"]), "reason": r["reason"]} for r in outcome.get("rejected", ())
    ]


def _attach_evaluations(record: dict[str, Any], clients: list[ClientEvaluation]) -> None:
    """Each client's own evaluation of the round's model, as figures of its node."""
    for client in clients:
        entry = record["clients"].setdefault(str(client.node), {})
        entry.setdefault("figures", {}).update(
            {"eval_accuracy": client.accuracy, "eval_loss": client.loss}
        )
        entry["eval_examples"] = client.examples


def _metric(traffic: NodeTraffic, key: str) -> float | int | None:
    if traffic.train_metrics is None or key not in traffic.train_metrics:
        return None
    value = traffic.train_metrics[key]
    return value if isinstance(value, int | float) else None


def _weighted_train_loss(traffic: dict[int, NodeTraffic]) -> float | None:
    """Training loss averaged over participants, weighted by their example counts."""
    pairs = [(_metric(t, wire.NUM_EXAMPLES), _metric(t, wire.TRAIN_LOSS)) for t in traffic.values()]
    pairs = [(n, loss) for n, loss in pairs if n and loss is not None]
    total = sum(n for n, _ in pairs)
    return sum(n * loss for n, loss in pairs) / total if total else None
