"""The run directory: config, per-round metrics as JSON lines, checkpoint, final model, summary."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
import torch

from fedq.errors import ConfigError

CONFIG_FILE = "config.json"
ROUNDS_FILE = "rounds.jsonl"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "summary.json"
FAILURE_FILE = "failure.json"
RESUME_CONFIG_FILE = "resume.toml"  # `flwr run --run-config` file that resumes this run
RESUMES_FILE = "resumes.jsonl"  # one line per resume: from which round, after what failure


@dataclass
class Checkpoint:
    """What the end of round `round` left: the global model, strategy and RNG states."""

    round: int
    model: dict[str, torch.Tensor]
    strategy: dict[str, Any]
    rng: dict[str, Any]
    run_id: str  # the id the run reports under (its first Flower run's), kept on resume


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

    @classmethod
    def existing(cls, path: Path) -> RunDirectory:
        """An existing run directory to resume; `ConfigError` if it cannot be one."""
        path = path.expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"resume-from={str(path)!r} is not a directory")
        for name in (CONFIG_FILE, CHECKPOINT_FILE):
            if not (path / name).is_file():
                raise ConfigError(
                    f"resume-from={str(path)!r} has no {name}: not a fedq run directory, "
                    "or the run ended before its first round"
                )
        return cls(path)

    def read_config(self) -> dict[str, Any]:
        """The run configuration written by `write_config`."""
        return json.loads((self.path / CONFIG_FILE).read_text(encoding="utf-8"))

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Write the run's configuration (config.json), and resume.toml: the same with
        `resume-from` naming this directory, for `flwr run --run-config resume.toml`."""
        _write_json(self.path / CONFIG_FILE, config)
        resume = {**config, "resume-from": str(self.path)}
        (self.path / RESUME_CONFIG_FILE).write_text(tomli_w.dumps(resume), encoding="utf-8")

    def append_round(self, record: Mapping[str, Any]) -> None:
        """Append one round's metrics as a JSON line (rounds.jsonl), flushed at once."""
        with (self.path / ROUNDS_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def save_model(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Save the final global model's state dict (model.pt, torch.save format)."""
        torch.save(dict(state_dict), self.path / MODEL_FILE)

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Replace checkpoint.pt atomically: write a temporary file, fsync it, rename it.

        A crash at any moment leaves either the previous checkpoint or this one, whole.
        """
        payload = {
            "round": checkpoint.round,
            "model": dict(checkpoint.model),
            "strategy": dict(checkpoint.strategy),
            "rng": dict(checkpoint.rng),
            "run_id": checkpoint.run_id,
        }
        tmp = self.path / (CHECKPOINT_FILE + ".tmp")
        with tmp.open("wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path / CHECKPOINT_FILE)
        _fsync_directory(self.path)

    def load_checkpoint(self) -> Checkpoint:
        """Read checkpoint.pt (written by `save_checkpoint`); `ConfigError` if unreadable."""
        path = self.path / CHECKPOINT_FILE
        try:
            # Strategy states hold tuples and numpy arrays: not loadable with weights_only.
            payload = torch.load(path, weights_only=False)
            return Checkpoint(
                round=int(payload["round"]),
                model=dict(payload["model"]),
                strategy=dict(payload["strategy"]),
                rng=dict(payload.get("rng", {})),
                run_id=str(payload.get("run_id", "")),
            )
        except Exception as exc:  # any unreadable file is the same error to the user
            raise ConfigError(f"{path} cannot be read as a fedq checkpoint: {exc}") from None

    def keep_rounds_until(self, server_round: int) -> list[dict[str, Any]]:
        """Drop records after `server_round` from rounds.jsonl (atomically); return the rest.

        A run that died between logging a round and checkpointing it logged one round more
        than its checkpoint holds; the resumed run logs that round again.
        """
        records = [r for r in read_rounds(self.path / ROUNDS_FILE) if r["round"] <= server_round]
        tmp = self.path / (ROUNDS_FILE + ".tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        tmp.replace(self.path / ROUNDS_FILE)
        return records

    def record_resume(self, from_round: int) -> None:
        """Log a resume in resumes.jsonl and clear the failure it recovers from."""
        failure = self.path / FAILURE_FILE
        previous = json.loads(failure.read_text(encoding="utf-8")) if failure.exists() else None
        entry = {"time": time.time(), "from_round": from_round, "previous_failure": previous}
        with (self.path / RESUMES_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
        failure.unlink(missing_ok=True)
        (self.path / SUMMARY_FILE).unlink(missing_ok=True)

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


def _fsync_directory(path: Path) -> None:
    """Make a rename in `path` durable (POSIX: the directory entry is data of its own)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    # Write then rename, so a reader never sees half a file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
