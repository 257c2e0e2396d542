"""`fedq resume RUN_DIR`: the demo federation of a stopped run, started again to finish it.

`fedq demo` writes what it started (clients, engine, availability, data, security) to
demo.json in its directory; the ServerApp writes the run config to the run directory's
config.json and a checkpoint after every round. Resuming starts the same federation in a
new demo directory and submits the same run config with `resume-from = RUN_DIR`: the
ServerApp continues that run directory from its checkpoint (server/resume.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cli.demo import PLAN_FILE, DemoPlan
from fedq.errors import ConfigError
from fedq.run_directory import ROUNDS_FILE, SUMMARY_FILE, RunDirectory, read_rounds
from fedq.runconfig import RunConfig
from server.resume import check_same_computation


def resume_plan(
    run_dir: Path,
    changes: dict[str, Any],
    *,
    output_dir: Path | None = None,
    timeout_seconds: float = 3600.0,
    monitor: str = "start",
) -> DemoPlan:
    """The plan that finishes the run in `run_dir`: its federation, its config + `changes`.

    `ConfigError` (before anything starts) if `run_dir` is no resumable demo run, if it
    already finished all its rounds, or if `changes` touch what a round computes.
    """
    run = RunDirectory.existing(run_dir)
    run_dir = run.path
    saved = run.read_config()
    demo_dir = Path(saved["output-dir"])
    plan_path = demo_dir / PLAN_FILE
    if not plan_path.is_file():
        raise ConfigError(
            f"{plan_path} is missing: {run_dir} was not started by `fedq demo`; resume it "
            f"with `flwr run` and the run config key resume-from='{run_dir}'"
        )
    parent = (output_dir or demo_dir.parent).expanduser().resolve()
    new_demo_dir = parent / f"demo-{time.strftime('%Y%m%d-%H%M%S')}-resume"
    config = RunConfig.from_mapping(
        {**saved, **changes, "output-dir": str(new_demo_dir), "resume-from": str(run_dir)}
    )
    check_same_computation(saved, config)
    done = max((r["round"] for r in read_rounds(run_dir / ROUNDS_FILE)), default=0)
    if (run_dir / SUMMARY_FILE).exists() and done >= config.num_server_rounds:
        raise ConfigError(
            f"{run_dir} finished all {done} rounds; give more with "
            f"--set num-server-rounds=N (N > {done}) to continue it"
        )
    started = json.loads(plan_path.read_text(encoding="utf-8"))
    return DemoPlan(
        config=config,
        clients=int(started["clients"]),
        demo_dir=new_demo_dir,
        timeout_seconds=timeout_seconds,
        engine=started["engine"],
        monitor=monitor,
        availability={int(i): s for i, s in started["availability"].items()},
        data={int(i): s for i, s in started["data"].items()},
        tls=bool(started["tls"]),
        stock_flower=bool(started["stock_flower"]),
        resume=run_dir,
    )
