"""Resuming a run: checkpoint files, the ServerApp's checks, the round shift, `fedq resume`.

The killed-ServerApp run over real processes is tests/test_e2e_resume.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

from cli.demo import PLAN_FILE
from cli.resume import resume_plan
from fedq.errors import ConfigError
from fedq.run_directory import Checkpoint, RunDirectory, read_rounds
from fedq.runconfig import RunConfig
from server.resume import (
    MAY_CHANGE,
    ContinuedRounds,
    check_same_computation,
    open_resume_point,
    prepare,
    restore_rng,
    rng_state,
)
from tests.conftest import FEDQ


def _checkpoint(server_round: int) -> Checkpoint:
    return Checkpoint(
        round=server_round,
        model={"w": torch.arange(6.0).reshape(2, 3)},
        strategy={"strategy": {"known": ["c1"]}, "client_of_node": {5: "c1"}},
        rng=rng_state(),
        run_id="42",
    )


def _run(tmp_path: Path, rounds_logged: int, checkpointed: int, **config) -> RunDirectory:
    """A run directory as a ServerApp leaves it after `rounds_logged` rounds."""
    demo_dir = tmp_path / "demo-1"
    run_dir = RunDirectory.create(demo_dir, "fedavg", 42)
    values = {"num-server-rounds": 5, "output-dir": str(demo_dir), **config}
    run_dir.write_config(RunConfig.from_mapping(values).to_mapping())
    for r in range(rounds_logged + 1):
        run_dir.append_round({"round": r, "participants": [1, 2]})
    run_dir.save_checkpoint(_checkpoint(checkpointed))
    return run_dir


def test_a_checkpoint_round_trips_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, 2, 2)
    loaded = run_dir.load_checkpoint()
    assert loaded.round == 2 and loaded.run_id == "42"
    assert torch.equal(loaded.model["w"], torch.arange(6.0).reshape(2, 3))
    assert loaded.strategy["client_of_node"] == {5: "c1"}
    assert sorted(p.name for p in run_dir.path.iterdir() if p.name.endswith(".tmp")) == []


def test_the_run_directory_holds_the_run_config_that_resumes_it(tmp_path: Path) -> None:
    import tomllib

    run_dir = _run(tmp_path, 1, 1, lr=0.05)
    resume = tomllib.loads((run_dir.path / "resume.toml").read_text())
    assert resume == {**run_dir.read_config(), "resume-from": str(run_dir.path)}
    open_resume_point(RunConfig.from_mapping(resume))  # exactly what the run computes


def test_an_unreadable_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, 1, 1)
    (run_dir.path / "checkpoint.pt").write_bytes(b"half a file")
    with pytest.raises(ConfigError, match=r"checkpoint.pt cannot be read as a fedq checkpoint"):
        run_dir.load_checkpoint()


def test_resuming_drops_rounds_after_the_checkpoint_and_clears_the_failure(tmp_path) -> None:
    # The ServerApp died after logging round 3 but before checkpointing it.
    run_dir = _run(tmp_path, 3, 2)
    run_dir.write_failure("killed")
    config = RunConfig.from_mapping(
        {**run_dir.read_config(), "resume-from": str(run_dir.path), "round-timeout": 30.0}
    )
    point = prepare(*open_resume_point(config))
    assert point.last_round == 2
    assert [r["round"] for r in point.records] == [0, 1, 2]
    assert [r["round"] for r in read_rounds(run_dir.path / "rounds.jsonl")] == [0, 1, 2]
    assert not (run_dir.path / "failure.json").exists()
    (entry,) = [json.loads(x) for x in (run_dir.path / "resumes.jsonl").read_text().splitlines()]
    assert entry["from_round"] == 2 and entry["previous_failure"] == {"reason": "killed"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr": 0.5}, r"resume-from: lr=0.5 \(the run has 0.1\): a resumed run must compute"),
        ({"compress": "int4", "seed": 3}, r"compress='int4' \(the run has 'none'\), seed=3"),
        ({"num-server-rounds": 1}, r"num-server-rounds=1 is fewer than the 2 rounds"),
    ],
)
def test_a_resume_that_would_compute_something_else_is_refused_untouched(
    tmp_path: Path, change: dict, message: str
) -> None:
    run_dir = _run(tmp_path, 2, 2)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.path.iterdir())
    config = RunConfig.from_mapping(
        {**run_dir.read_config(), **change, "resume-from": str(run_dir.path)}
    )
    with pytest.raises(ConfigError, match=message):
        open_resume_point(config)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.path.iterdir()) == before


def test_only_where_and_how_patiently_a_run_goes_may_change() -> None:
    saved = RunConfig().to_mapping()
    changed = {"num-server-rounds": 50, "round-timeout": 9.0, "min-replies": 2, "monitor": ""}
    check_same_computation(saved, RunConfig.from_mapping({**saved, **changed}))
    assert "lr" not in MAY_CHANGE and "strategy" not in MAY_CHANGE


@pytest.mark.parametrize("missing", ["a directory", "config.json", "checkpoint.pt"])
def test_resume_from_a_directory_that_is_no_run_says_what_is_missing(tmp_path, missing) -> None:
    run_dir = _run(tmp_path, 1, 1)
    target = run_dir.path
    if missing == "a directory":
        target = tmp_path / "nowhere"
    else:
        (target / missing).unlink()
    config = RunConfig(resume_from=str(target))
    expected = "is not a directory" if missing == "a directory" else f"has no {missing}"
    with pytest.raises(ConfigError, match=expected):
        open_resume_point(config)


def test_the_generators_continue_where_the_checkpoint_left_them() -> None:
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


class _Recording:
    """A Flower strategy's four round methods, recording the round numbers they get."""

    def __init__(self) -> None:
        self.rounds: list[tuple[str, int]] = []

    def configure_train(self, server_round, arrays, config, grid):
        self.rounds.append(("configure_train", server_round))
        return []

    def aggregate_train(self, server_round, replies):
        self.rounds.append(("aggregate_train", server_round))
        return None, None

    def configure_evaluate(self, server_round, arrays, config, grid):
        self.rounds.append(("configure_evaluate", server_round))
        return []

    def aggregate_evaluate(self, server_round, replies):
        self.rounds.append(("aggregate_evaluate", server_round))
        return None

    def summary(self) -> None:
        pass


class _NoGrid:
    def send_and_receive(self, messages, timeout):
        return []


def test_flowers_round_loop_runs_the_rounds_left_under_the_runs_numbers() -> None:
    inner = _Recording()
    continued = ContinuedRounds(inner, offset=3)  # type: ignore[arg-type]
    evaluated: list[int] = []

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        evaluated.append(server_round)
        return MetricRecord({"accuracy": 1.0})

    continued.start(
        grid=_NoGrid(),  # type: ignore[arg-type]
        initial_arrays=ArrayRecord(),
        num_rounds=2,
        train_config=ConfigRecord(),
        evaluate_fn=continued.evaluate_fn(evaluate),
    )
    assert sorted({r for _, r in inner.rounds}) == [4, 5]
    assert len(inner.rounds) == 8
    assert evaluated == [4, 5]  # round 0 was evaluated before the checkpoint


def _demo_run(tmp_path: Path, rounds_logged: int, finished: bool = False) -> RunDirectory:
    run_dir = _run(tmp_path, rounds_logged, rounds_logged)
    plan = {
        "clients": 3,
        "engine": "deployment",
        "availability": {"1": "bernoulli:0.5"},
        "data": {},
        "tls": True,
        "stock_flower": False,
    }
    (run_dir.path.parent / PLAN_FILE).write_text(json.dumps(plan))
    if finished:
        run_dir.write_summary({"rounds": rounds_logged})
    return run_dir


def test_fedq_resume_starts_the_same_federation_for_the_same_run(tmp_path: Path) -> None:
    run_dir = _demo_run(tmp_path, 2)
    plan = resume_plan(run_dir.path, {"round-timeout": 20.0}, monitor="")
    assert plan.resume == run_dir.path and plan.config.resume_from == str(run_dir.path)
    assert (plan.clients, plan.engine, plan.tls) == (3, "deployment", True)
    assert plan.availability == {1: "bernoulli:0.5"}
    assert plan.config.round_timeout == 20.0 and plan.config.num_server_rounds == 5
    assert plan.demo_dir.parent == run_dir.path.parent.parent
    assert plan.demo_dir.name.endswith("-resume") and not plan.demo_dir.exists()


def test_fedq_resume_of_a_finished_run_needs_more_rounds(tmp_path: Path) -> None:
    run_dir = _demo_run(tmp_path, 5, finished=True)
    with pytest.raises(ConfigError, match=r"finished all 5 rounds; give more with --set"):
        resume_plan(run_dir.path, {})
    assert resume_plan(run_dir.path, {"num-server-rounds": 8}).config.num_server_rounds == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "lr=0.3"], "lr=0.3 (the run has 0.1)"),
        (["--timeout", "-5"], "--timeout=-5.0 must be a positive number of seconds"),
    ],
)
def test_fedq_resume_refuses_in_one_line_before_starting_anything(
    tmp_path: Path, args: list[str], message: str
) -> None:
    import subprocess

    run_dir = _demo_run(tmp_path, 2)
    result = subprocess.run(
        [FEDQ, "resume", str(run_dir.path), *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.startswith("fedq: error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(run_dir.path.parent.parent.glob("demo-*-resume")) == []


def test_fedq_resume_of_a_directory_that_is_no_run_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"has no config.json: not a fedq run directory"):
        resume_plan(tmp_path, {})
    run_dir = _run(tmp_path, 1, 1)  # a run, but not one `fedq demo` started
    with pytest.raises(ConfigError, match=r"demo.json is missing: .* resume-from="):
        resume_plan(run_dir.path, {})


def test_fedau_num_clients_is_computational_and_a_run_saved_without_it_resumes() -> None:
    saved = RunConfig(strategy="fedau").to_mapping()
    assert "fedau-num-clients" not in MAY_CHANGE
    with pytest.raises(
        ConfigError, match=r"resume-from: fedau-num-clients=20 \(the run has 0\): a resumed"
    ):
        check_same_computation(saved, RunConfig.from_mapping({**saved, "fedau-num-clients": 20}))
    # A run written before the key existed divided by the clients heard from, as 0 does.
    older = {k: v for k, v in saved.items() if k != "fedau-num-clients"}
    check_same_computation(older, RunConfig.from_mapping(older))
    with pytest.raises(ConfigError, match=r"fedau-num-clients=20 \(the run has 0\)"):
        check_same_computation(older, RunConfig.from_mapping({**older, "fedau-num-clients": 20}))
