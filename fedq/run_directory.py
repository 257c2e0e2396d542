"""The run directory: config, per-round metrics as JSON lines, final model, summary."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

CONFIG_FILE = "config.json"
ROUNDS_FILE = "rounds.jsonl"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "summary.json"
FAILURE_FILE = "failure.json"


class RunDirectory:
    """Files of one run under `<output-dir>/<timestamp>-<strategy>-run<id>/`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, output_dir: Path, strategy: str, run_id: int) -> RunDirectory:
        """Make a new, uniquely named run directory below `output_dir`."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = output_dir.expanduser().resolve() / f"{stamp}-{strategy}-run{run_id}"
        path.mkdir(parents=True, exist_ok=False)
        return cls(path)

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Write the run's configuration (config.json)."""
        _write_json(self.path / CONFIG_FILE, config)

    def append_round(self, record: Mapping[str, Any]) -> None:
        """Append one round's metrics as a JSON line (rounds.jsonl), flushed at once."""
        with (self.path / ROUNDS_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def save_model(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Save the final global model's state dict (model.pt, torch.save format)."""
        torch.save(dict(state_dict), self.path / MODEL_FILE)

    def save_checkpoint(
        self, server_round: int, state_dict: Mapping[str, torch.Tensor], strategy: Mapping[str, Any]
    ) -> None:
        """Overwrite checkpoint.pt with the global model, strategy state and round number."""
        payload = {"round": server_round, "model": dict(state_dict), "strategy": dict(strategy)}
        tmp = self.path / (CHECKPOINT_FILE + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(self.path / CHECKPOINT_FILE)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Write the end-of-run summary (summary.json); its presence marks success."""
        _write_json(self.path / SUMMARY_FILE, summary)

    def write_failure(self, reason: str) -> None:
        """Record why the run failed (failure.json)."""
        _write_json(self.path / FAILURE_FILE, {"reason": reason})


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """Read every complete line of a rounds.jsonl file (a partial last line is skipped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the writer is mid-line; the rest arrives on the next read
    return records


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    # Write then rename, so a reader never sees half a file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
