"""Continue a run from its checkpoint: run config `resume-from = RUN_DIR`.

After every round the ServerApp checkpoints the global model, the strategy's state (the
Link's and the algorithm's: FedAU's estimator, LoDAdaC's graph and public copies) and the
server's random number generators (`fedq.run_directory.Checkpoint`). A resumed run:

1. checks that its run config computes the same thing as the run's config.json (only
   the keys in `MAY_CHANGE` may differ), before anything in the run directory changes;
2. drops records after the checkpoint's round from rounds.jsonl, logs the resume in
   resumes.jsonl and clears failure.json;
3. restores the model, the strategy's state and the generators, and runs Flower's
   round loop for the rounds left, numbered on from the checkpoint (`ContinuedRounds`).

A resumed run is a new Flower run, so every client starts with an empty Context: what
the clients kept between rounds is rebuilt by the strategy (`forget_client_state`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedq.errors import ConfigError
from fedq.run_directory import Checkpoint, RunDirectory
from fedq.runconfig import RunConfig

log = logging.getLogger(__name__)

# Run-config keys a resumed run may change: where and how patiently it runs, how many
# rounds in all; never what a round computes.
MAY_CHANGE = frozenset(
    {
        "resume-from",
        "output-dir",
        "num-server-rounds",
        "round-timeout",
        "reply-poll-interval",
        "monitor",
        "min-clients",
        "min-replies",
    }
)
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


@dataclass
class ResumePoint:
    """Where a resumed run starts: its directory, checkpoint and earlier records."""

    run_dir: RunDirectory
    checkpoint: Checkpoint
    records: list[dict[str, Any]]

    @property
    def last_round(self) -> int:
        """The last complete round; the resumed run starts with the one after it."""
        return self.checkpoint.round


def open_resume_point(config: RunConfig) -> tuple[RunDirectory, Checkpoint]:
    """The run directory named by `resume-from` and its checkpoint, checked against
    `config`; `ConfigError` (nothing changed on disk) if the run cannot be resumed so."""
    run_dir = RunDirectory.existing(Path(config.resume_from))
    checkpoint = run_dir.load_checkpoint()
    check_same_computation(run_dir.read_config(), config)
    if config.num_server_rounds < checkpoint.round:
        raise ConfigError(
            f"num-server-rounds={config.num_server_rounds} is fewer than the "
            f"{checkpoint.round} rounds the run at {run_dir.path} has already done"
        )
    return run_dir, checkpoint


def prepare(run_dir: RunDirectory, checkpoint: Checkpoint) -> ResumePoint:
    """Make the run directory continue from `checkpoint` (rounds.jsonl, resumes.jsonl)."""
    records = run_dir.keep_rounds_until(checkpoint.round)
    run_dir.record_resume(checkpoint.round)
    log.info("resuming %s after round %d", run_dir.path, checkpoint.round)
    return ResumePoint(run_dir, checkpoint, records)


def check_same_computation(saved: Mapping[str, Any], config: RunConfig) -> None:
    """`ConfigError` naming every key (outside `MAY_CHANGE`) whose value differs.

    A key the saved config lacks was written by a fedq that did not have it yet, which
    computed what the key's default computes (a new key's default keeps the old behaviour),
    so it is compared as that default.
    """
    new, defaults = config.to_mapping(), RunConfig().to_mapping()
    keys = (set(saved) | set(new)) - MAY_CHANGE
    old = {key: saved.get(key, defaults.get(key)) for key in keys}
    differ = sorted(key for key in keys if old[key] != new.get(key))
    if differ:
        details = ", ".join(f"{k}={new.get(k)!r} (the run has {old[k]!r})" for k in differ)
        raise ConfigError(
            f"resume-from: {details}: a resumed run must compute what the run did; "
            f"only {', '.join(sorted(MAY_CHANGE))} may change"
        )


def rng_state() -> dict[str, Any]:
    """The server's random number generators: Python's (Flower samples nodes with it),
    numpy's and torch's global ones."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the generators to what `rng_state` returned (no-op for an empty mapping)."""
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"])


class ContinuedRounds(Strategy):
    """``strategy`` with Flower's round numbers shifted by ``offset``.

    Flower's round loop counts from 1; the rounds a resumed run still has to do are
    offset+1, offset+2, ... . Clients seed their training by the round number, and the
    strategies keep per-round state, so they see the run's own numbers.
    """

    def __init__(self, strategy: Strategy, offset: int) -> None:
        self.strategy = strategy
        self.offset = offset

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's training messages for round ``server_round + offset``."""
        return self.strategy.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The wrapped strategy's aggregation of round ``server_round + offset``."""
        return self.strategy.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's evaluation messages for round ``server_round + offset``."""
        return self.strategy.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The wrapped strategy's evaluation aggregate of round ``server_round + offset``."""
        return self.strategy.aggregate_evaluate(server_round + self.offset, replies)

    def summary(self) -> None:
        """Log the wrapped strategy's summary and where the run resumes."""
        self.strategy.summary()
        log.info(
            "\t└──> resumed after round %d: Flower's round i is the run's round %d + i",
            self.offset,
            self.offset,
        )

    def evaluate_fn(self, evaluate: EvaluateFn) -> EvaluateFn:
        """``evaluate`` for the shifted rounds; round 0 (done before the checkpoint) is
        skipped."""

        def shifted(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if server_round == 0:
                return None
            return evaluate(server_round + self.offset, arrays)

        return shifted
