"""Benchmark: test accuracy of quantized training on digits, per number format, vs fp32.

Prints three tables:
1. centralized training, weights + activations in each format, mean ± std over seeds;
2. federated training (FedAvg, 4 clients, IID and Dirichlet 0.3), same formats and seeds;
3. the MXFP4 block-size sweep (8, 16, 32, 64) with E8M0 vs UE5M3 block scales: the
   quantization error on real trained weights (signal-to-noise ratio, dB) and the accuracy
   of training under each.

The federated rounds run in this process: each client is the real ClientApp `train`
handler called with a Flower Message, and the server step is `aggregate_arrayrecords`, the
function Flower's FedAvg aggregates with; only the gRPC transport is left out (it does not
change the numbers). Usage:

    python bench/quant_training.py                 # full run, 3 seeds
    python bench/quant_training.py --seeds 1 --rounds 5 --formats fp32,int8   # quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from client.client_app import train as client_train
from client.training import train_local
from fedq import wire
from fedq.data import load_digits_split
from fedq.models import ModelSpec, build_model, evaluate
from fedq.runconfig import RunConfig
from quant import FORMATS, fake_quantize
from quant.qat import quantize_model
from quant.training_spec import QuantSpec, TensorQuant, parse_quant_spec

GOALS = {"int8": 0.5, "mxfp8_e4m3": 0.5, "mxfp8_e5m2": 0.5, "mxfp4_e2m1": 2.0}


def spec_for(fmt: str) -> QuantSpec:
    """Weights and activations in `fmt` (fp32: nothing quantized)."""
    return parse_quant_spec("fp32" if fmt == "fp32" else f"w={fmt},a={fmt}")


def centralized_accuracy(model_name: str, spec: QuantSpec, seed: int, steps: int) -> float:
    """Train on the whole train split for `steps` SGD steps under `spec`; test accuracy."""
    train, test = load_digits_split()
    model = quantize_model(
        build_model(ModelSpec(model_name), seed), spec, torch.Generator().manual_seed(seed)
    )
    train_local(model, train, steps=steps, batch_size=32, lr=0.1, seed=seed)
    return evaluate(model, test)[1]


def _message(content: RecordDict, node: int) -> Message:
    metadata = Metadata(
        run_id=1,
        message_id=f"m{node}",
        src_node_id=1,
        dst_node_id=node,
        reply_to_message_id="",
        group_id="bench",
        created_at=time.time(),
        ttl=3600.0,
        message_type="train",
    )
    return Message(content, metadata=metadata)


def federated_accuracy(
    model_name: str, spec: QuantSpec, seed: int, rounds: int, partitioner: str, clients: int
) -> float:
    """FedAvg for `rounds` rounds with the real ClientApp handler; final test accuracy."""
    run = RunConfig(
        model=model_name,
        seed=seed,
        partitioner=partitioner,
        dirichlet_alpha=0.3,
        quant=spec.describe() or "fp32",
    )
    contexts = [
        Context(
            1,
            10 + i,
            {"partition-id": i, "num-partitions": clients},
            RecordDict(),
            run.to_mapping(),
        )
        for i in range(clients)
    ]
    arrays = ArrayRecord(build_model(ModelSpec(model_name), seed).state_dict())
    for server_round in range(1, rounds + 1):
        config = ConfigRecord(
            {
                wire.SERVER_ROUND: server_round,
                wire.LOCAL_STEPS: run.local_steps,
                wire.BATCH_SIZE: run.batch_size,
                wire.LR: run.lr,
            }
        )
        replies = [
            client_train(_message(RecordDict({wire.ARRAYS: arrays, wire.CONFIG: config}), i), ctx)
            for i, ctx in enumerate(contexts)
        ]
        arrays = aggregate_arrayrecords([r.content for r in replies], wire.NUM_EXAMPLES)
    model = quantize_model(build_model(ModelSpec(model_name), seed), spec)
    model.load_state_dict(arrays.to_torch_state_dict())
    return evaluate(model, load_digits_split()[1])[1]


def weight_snr_db(weights: Sequence[torch.Tensor], quant: TensorQuant) -> float:
    """Signal-to-quantization-noise ratio (dB) of `weights` rounded with `quant`."""
    signal = noise = 0.0
    for w in weights:
        q = fake_quantize(w, quant.fmt, block_size=quant.block_size, scale=quant.scale)
        signal += float((w**2).sum())
        noise += float(((q - w) ** 2).sum())
    return 10 * torch.log10(torch.tensor(signal / noise)).item()


def _stats(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def _table(title: str, rows: dict[str, list[float]], check_goals: bool) -> None:
    print(f"\n## {title}\n")
    print("| format | accuracy (mean ± std, %) | Δ vs fp32 (points) | goal |")
    print("| --- | --- | --- | --- |")
    base, _ = _stats(rows["fp32"])
    for fmt, values in rows.items():
        mean, std = _stats(values)
        delta = 100 * (mean - base)
        goal = ""
        if check_goals and fmt in GOALS:
            ok = delta >= -GOALS[fmt]
            goal = f"within {GOALS[fmt]} pt: {'met' if ok else 'MISSED'}"
        print(f"| {fmt} | {100 * mean:.2f} ± {100 * std:.2f} | {delta:+.2f} | {goal} |")


def _sweep(model_name: str, seeds: Sequence[int], steps: int) -> None:
    print("\n## MXFP4 (E2M1) block-size sweep: E8M0 vs UE5M3 block scales\n")
    trained = build_model(ModelSpec(model_name), seeds[0])
    train_local(trained, load_digits_split()[0], steps=steps, batch_size=32, lr=0.1, seed=0)
    weights = [p.detach() for n, p in trained.named_parameters() if n.endswith("weight")]
    print("| block | scale | weight SNR (dB, trained fp32 weights) | accuracy w+a (%) |")
    print("| --- | --- | --- | --- |")
    for block in (8, 16, 32, 64):
        for scale in ("e8m0", "ue5m3"):
            quant = TensorQuant("mxfp4_e2m1", block, scale)
            spec = QuantSpec(weights=quant, activations=quant)
            acc = [centralized_accuracy(model_name, spec, s, steps) for s in seeds]
            mean, std = _stats(acc)
            print(
                f"| {block} | {scale} | {weight_snr_db(weights, quant):.2f} "
                f"| {100 * mean:.2f} ± {100 * std:.2f} |"
            )


def _machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [
        line.split(":", 1)[1].strip()
        for line in cpuinfo.splitlines()
        if line.startswith("model name")
    ]
    cpu = models[0] if models else platform.processor()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem:.0f} GiB, {cpu}, torch {torch.__version__}"


def _run_all(
    label: str,
    formats: Sequence[str],
    seeds: Sequence[int],
    measure: Callable[[QuantSpec, int], float],
) -> dict[str, list[float]]:
    rows = {}
    for fmt in formats:
        started = time.perf_counter()
        rows[fmt] = [measure(spec_for(fmt), s) for s in seeds]
        print(f"  [{label}] {fmt}: {time.perf_counter() - started:.1f} s", flush=True)
    return rows


def main() -> None:
    """Parse arguments, run the three measurements, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600, help="centralized SGD steps")
    parser.add_argument("--rounds", type=int, default=20, help="federated rounds")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--formats", default="fp32," + ",".join(FORMATS))
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args()
    formats = args.formats.split(",")
    if "fp32" not in formats:
        formats.insert(0, "fp32")
    seeds = list(range(args.seeds))
    print(f"machine: {_machine()}")
    print(
        f"model {args.model}, seeds {seeds}, centralized {args.steps} steps, "
        f"federated {args.clients} clients x {args.rounds} rounds"
    )
    central = _run_all(
        "centralized",
        formats,
        seeds,
        lambda spec, s: centralized_accuracy(args.model, spec, s, args.steps),
    )
    _table("Centralized, weights + activations quantized", central, check_goals=True)
    for partitioner, label in (("iid", "IID"), ("dirichlet", "Dirichlet 0.3")):
        rows = _run_all(
            label,
            formats,
            seeds,
            lambda spec, s, p=partitioner: federated_accuracy(
                args.model, spec, s, args.rounds, p, args.clients
            ),
        )
        _table(f"Federated FedAvg, {args.clients} clients, {label}", rows, check_goals=True)
    if not args.skip_sweep:
        _sweep(args.model, seeds, args.steps)


if __name__ == "__main__":
    main()
