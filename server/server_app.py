"""The fedq ServerApp: run config -> strategy -> rounds -> run directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedq import trace, wire
from fedq.datasources import load_source
from fedq.models import build_model, count_parameters
from fedq.run_directory import RunDirectory
from fedq.runconfig import RunConfig
from quant.qat import quantize_model
from server.metering import MeteredGrid, content_bytes
from server.resume import ContinuedRounds, ResumePoint, open_resume_point, prepare, restore_rng
from server.round_recorder import RoundRecorder
from server.strategy_factory import build_strategy
from server.telemetry import Telemetry

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run `num-server-rounds` rounds of the configured strategy and write the run directory.

    With `resume-from` set, the run in that directory continues from its checkpoint
    (server/resume.py) instead. With `monitor` set, one report per round goes to the
    monitor's telemetry ingest (token from the environment variable
    FEDQ_MONITOR_INGEST_TOKEN); training never waits for it.
    """
    trace.mark("serverapp-start", at=trace.process_start_time())
    trace.mark("serverapp-main")
    config = RunConfig.from_mapping(context.run_config)
    resume_point: ResumePoint | None = None
    if config.resume_from:
        # Checked before anything in the run directory changes: a refused resume leaves
        # the run as it was.
        run_dir, checkpoint = open_resume_point(config)
        resume_point = prepare(run_dir, checkpoint)
        run_id = checkpoint.run_id or str(context.run_id)
    else:
        run_dir = RunDirectory.create(Path(config.output_dir), config.strategy, context.run_id)
        run_dir.write_config(config.to_mapping())
        run_id = str(context.run_id)
    telemetry = Telemetry(None, run_id)  # a no-op until the monitor's is open
    try:
        telemetry = Telemetry.open(config, run_id)
        summary = _train(grid, config, run_dir, telemetry, resume_point)
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        run_dir.write_failure(reason)
        telemetry.finish(failed=True, reason=reason)
        raise
    run_dir.write_summary(summary)
    telemetry.finish(failed=False)


def _train(
    grid: Grid,
    config: RunConfig,
    run_dir: RunDirectory,
    telemetry: Telemetry,
    resume_point: ResumePoint | None,
) -> dict[str, Any]:
    model = build_model(config.model_spec, seed=config.seed)
    # The server evaluates the global model as the clients compute with it.
    evaluation_model = quantize_model(
        build_model(config.model_spec, seed=config.seed), config.quant_spec
    )
    metered = MeteredGrid(grid, poll_interval=config.reply_poll_interval)
    # No server data: the clients evaluate, each on its validation share.
    test = load_source(config.server_source, config.model_spec) if config.server_source else None
    strategy = build_strategy(config)
    initial = ArrayRecord(model.state_dict())
    telemetry.start(config, count_parameters(model), name=run_dir.path.name)
    recorder = RoundRecorder(
        evaluation_model,
        test,
        metered.ledger,
        run_dir,
        count_parameters(model),
        strategy,
        fp32_message_bytes=content_bytes(RecordDict({wire.ARRAYS: initial})),
        on_record=telemetry.round,
        run_id=telemetry.run_id,
    )
    rounds: Strategy = strategy
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] = recorder
    start_arrays, rounds_left = initial, config.num_server_rounds
    if resume_point is not None:
        checkpoint = resume_point.checkpoint
        strategy.load_state(checkpoint.strategy)
        strategy.forget_client_state()
        restore_rng(checkpoint.rng)
        recorder.continue_from(resume_point.records)
        for record in resume_point.records:  # the monitor shows the whole run
            telemetry.round(record)
        start_arrays = ArrayRecord(checkpoint.model)
        rounds_left = config.num_server_rounds - checkpoint.round
        continued = ContinuedRounds(strategy, checkpoint.round)
        rounds, evaluate_fn = continued, continued.evaluate_fn(recorder)
    result = rounds.start(
        grid=metered,
        initial_arrays=start_arrays,
        num_rounds=rounds_left,
        timeout=config.round_timeout,
        train_config=ConfigRecord(
            {
                wire.LOCAL_STEPS: config.local_steps,
                wire.BATCH_SIZE: config.batch_size,
                wire.LR: config.lr,
            }
        ),
        evaluate_fn=evaluate_fn,
    )
    final = result.arrays if len(result.arrays) else start_arrays
    run_dir.save_model(final.to_torch_state_dict())
    last = recorder.records[-1]
    return {
        "strategy": config.strategy,
        "model": config.model,
        "evaluation": recorder.evaluation_kind,
        "quant": config.quant_spec.describe(),
        "compress": config.compress,
        "downlink": config.downlink,
        "num_parameters": count_parameters(model),
        "rounds": last["round"],
        "final_accuracy": last["accuracy"],
        "final_loss": last["loss"],
        "bytes_up": last["cum_bytes_up"],
        "bytes_down": last["cum_bytes_down"],
        "payload_bytes_up": last["cum_payload_bytes_up"],
        "payload_bytes_down": last["cum_payload_bytes_down"],
        "uplink_bits_per_param": last["cum_uplink_bits_per_param"],
        "uplink_ratio_to_fp32": last["uplink_ratio_to_fp32"],
        "wall_seconds": round(recorder.elapsed_seconds, 3),
        "run_dir": str(run_dir.path),
    }
