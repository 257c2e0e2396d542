"""Deterministic telemetry of small runs, built as the ServerApp builds it (round records)."""

from __future__ import annotations

from dataclasses import dataclass

from monitor.figures import CONSENSUS_DISTANCE, FEDAU_WEIGHT
from proto import telemetry_pb2 as pb
from server.telemetry import reports

# Flower node ids are random uint64s; one is above 2**63 and one above 2**53 on purpose.
NODES = (902113447718, 4417788123456789012, 6173921174433711203, 12873004471292034112)
NUM_PARAMETERS = 9_610
FP32_MESSAGE_BYTES = 40_612  # one dense fp32 model message, as metered
INT8_MESSAGE_BYTES = 10_824  # the same update as int8 with per-block scales
T0 = 1_767_000_000.0  # Unix seconds
ACCURACY = (0.0944, 0.5306, 0.7222, 0.8056, 0.8528, 0.8806, 0.9028, 0.9111, 0.9194, 0.9250)
ACCURACY += (0.9306, 0.9333, 0.9389)
LOSS = (2.3101, 1.6013, 1.0224, 0.7416, 0.5702, 0.4633, 0.3949, 0.3431, 0.3101, 0.2843)
LOSS += (0.2650, 0.2511, 0.2398)
# A reason a client controls, and so must be shown as text, never as markup.
HOSTILE_REASON = '<img src=x onerror="window.__pwned=1">payload shape (10,) != (128, 64)'
FAILURE_REASON = "no reply within round-timeout (600 s)"


@dataclass(frozen=True)
class SampleRun:
    """All messages of one run, in the order a ServerApp sends them."""

    started: pb.RunStarted
    rounds: list[pb.RoundReport]
    finished: pb.RunFinished | None

    @property
    def messages(self) -> list[pb.RunStarted | pb.RoundReport | pb.RunFinished]:
        """Every message, RunStarted first."""
        tail = [self.finished] if self.finished is not None else []
        return [self.started, *self.rounds, *tail]


def _round_state(r: int) -> tuple[list[int], list[int], dict[int, str], dict[int, str]]:
    """Participants, non-participants, rejected and failed nodes of round `r` (r ≥ 1)."""
    participants = list(NODES)
    skipped = [NODES[3]] if r % 4 == 0 else []
    rejected = {NODES[1]: HOSTILE_REASON} if r == 3 else {}
    failed = {NODES[2]: FAILURE_REASON} if r == 6 else {}
    participants = [n for n in participants if n not in skipped and n not in failed]
    return participants, skipped, rejected, failed


def client_id(node: int) -> str:
    """The client id (node-config `client-id`) of a sample node: client-0 for NODES[0], ..."""
    return f"client-{NODES.index(node)}"


def round_record(r: int, strategy: str, cum: dict[str, int]) -> dict:
    """One rounds.jsonl-style record, extended with the monitor's extra keys."""
    participants, skipped, rejected, failed = ([], [], {}, {}) if r == 0 else _round_state(r)
    up_each = INT8_MESSAGE_BYTES if strategy == "fedau" else FP32_MESSAGE_BYTES
    contacted = [n for n in NODES if n not in skipped] if r else []
    counted = [n for n in participants if n not in rejected]
    clients = {
        str(n): {
            "client_id": client_id(n),
            "bytes_up": up_each if n in participants else 0,
            "bytes_down": FP32_MESSAGE_BYTES,
            "num_examples": 359 + NODES.index(n),
            "train_loss": round(LOSS[min(r, len(LOSS) - 1)] * (1.05 + 0.01 * NODES.index(n)), 4),
            "figures": {FEDAU_WEIGHT: round(0.7 + 0.1 * NODES.index(n) - 0.01 * r, 4)}
            if strategy == "fedau"
            else {},
        }
        for n in contacted
    }
    totals = {
        "bytes_up": sum(c["bytes_up"] for c in clients.values()),
        "bytes_down": sum(c["bytes_down"] for c in clients.values()),
        "fp32_bytes_up": FP32_MESSAGE_BYTES * len(participants),
        "fp32_bytes_down": FP32_MESSAGE_BYTES * len(contacted),
    }
    for key, value in totals.items():
        cum[key] = cum.get(key, 0) + value
    record = {
        "round": r,
        "time": T0 + 30.0 * r,
        "elapsed_seconds": 30.0 * r,
        "accuracy": ACCURACY[min(r, len(ACCURACY) - 1)],
        "loss": LOSS[min(r, len(LOSS) - 1)],
        "train_loss": None if r == 0 else round(LOSS[min(r, len(LOSS) - 1)] * 1.1, 4),
        "participants": participants,
        "non_participants": skipped,
        "failures": [{"node": n, "reason": why} for n, why in failed.items()],
        "rejected": [{"node": n, "reason": why} for n, why in rejected.items()],
        **totals,
        **{f"cum_{key}": value for key, value in cum.items()},
        "uplink_bits_per_param": 8 * totals["bytes_up"] / (len(counted) * NUM_PARAMETERS)
        if counted
        else None,
        "downlink_bits_per_param": 8 * totals["bytes_down"] / (len(contacted) * NUM_PARAMETERS)
        if contacted
        else None,
        "clients": clients,
    }
    if strategy == "lodadac" and r > 0:
        record["figures"] = {CONSENSUS_DISTANCE: round(1.8 / (r + 1), 4)}
    return record


def sample_run(
    run_id: str = "20260101-120000-fedau-run7",
    strategy: str = "fedau",
    rounds: int = 8,
    finished: bool = True,
    name: str = "",
    started_at: float = T0 - 5.0,
) -> SampleRun:
    """A run of `rounds` rounds (plus round 0) over the four NODES, named `name`."""
    started = reports.run_started(
        run_id,
        strategy=strategy,
        model="mlp",
        num_parameters=NUM_PARAMETERS,
        clients_expected=len(NODES),
        config={"num-server-rounds": rounds, "strategy": strategy, "lr": 0.1, "quant": "fp32"},
        started_at=started_at,
        name=name,
    )
    cum: dict[str, int] = {}
    reports_ = [
        reports.round_report(run_id, round_record(r, strategy, cum)) for r in range(rounds + 1)
    ]
    end = reports.run_finished(run_id, finished_at=T0 + 30.0 * rounds + 1) if finished else None
    return SampleRun(started, reports_, end)
