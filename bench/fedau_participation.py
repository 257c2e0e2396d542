"""Benchmark: FedAU vs its baselines when clients take part with unknown, unequal rates.

Digits, 20 clients, Dirichlet(0.1) label skew, participation correlated with each client's
labels (docs/algorithms.md: p_n = max(0.02, C * m * <a_n, b>), mean about m = 0.1), under
three patterns: Bernoulli, Markov with q = 0.05, cyclic with a period of 100 rounds. Arms:
FedAU with no cutoff and with K = 50, FedAvg over participants, FedAvg over all clients, and
the known-probability oracle (1/p weights). 5 local SGD steps, minibatch 16.

Scored as the paper's authors score it: a run's accuracy is its mean test accuracy over the
last 50 rounds (the last 10 % of a shorter run, at least 5 rounds), then mean ± std over
seeds. Only the scored rounds and every 25th round (for the curve) are evaluated.

Learning rates are tuned per arm first, as the authors tune theirs: a grid of client lr
(and of server lr for the two FedAvg baselines) on one pattern and one seed that is not
among the reported seeds, over fewer rounds; each arm keeps the setting with the best score.
`--lr ARM=LR[:SERVER_LR]` fixes an arm's setting instead (then it is not tuned).

Runs in this process (bench/in_process_grid.py): Flower's `Strategy.start` with fedq's FedAU
and fedq's ClientApp, without the gRPC transport. Prints a table per pattern and whether the
goals hold on the score: FedAU >= participants + 3 points, FedAU >= known-prob - 1 point.

    python bench/fedau_participation.py --rounds 1500 \
        --plot docs/benchmarks/fedau_participation.png \
        --json docs/benchmarks/fedau_participation.json
    python bench/fedau_participation.py --rounds 60 --seeds 1 --tune-rounds 0  # quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import plots
from in_process_grid import InProcessGrid, run_rounds_at

from client.client_app import app as client_app
from fedq.runconfig import RunConfig

PATTERNS = {
    "bernoulli": "bernoulli:label:{m}",
    "markov": "markov:0.05:label:{m}",
    "cyclic": "cyclic:100:label:{m}",
}
CURVE_EVERY = 25  # rounds between the evaluations drawn in the curve
SCORE_ROUNDS = 50  # the score is the mean over this many last rounds...
SCORE_FRACTION = 0.1  # ...or over this fraction of a shorter run...
MIN_SCORE_ROUNDS = 5  # ...but never fewer rounds than this
# Grids in steps of 10^0.25, as the paper's authors tune: client lr for every arm; server
# lr too for the FedAvg baselines, whose step size the missing weights change.
CLIENT_LRS = (0.0316, 0.0562, 0.1, 0.178)
SERVER_LRS = {"participants": (1.0, 1.78), "all": (3.16, 5.62, 10.0)}
DEFAULT_LR = 0.1  # the paper's reference local lr, used untuned


@dataclass(frozen=True)
class Arm:
    """One compared method: a FedAU mode and its cutoff K (0: none)."""

    name: str
    mode: str
    cutoff: int = 0


ARMS = (
    Arm("fedau", "fedau"),
    Arm("fedau-K50", "fedau", cutoff=50),
    Arm("participants", "participants"),
    Arm("all", "all"),
    Arm("known-prob", "known-prob"),
)


@dataclass(frozen=True)
class StepSizes:
    """An arm's client learning rate and server learning rate η_g."""

    lr: float
    server_lr: float = 1.0

    def describe(self) -> str:
        """`lr` or `lr:server_lr` as `--lr` takes it."""
        return f"{self.lr:g}" if self.server_lr == 1.0 else f"{self.lr:g}:{self.server_lr:g}"


def score_rounds(rounds: int) -> int:
    """How many last rounds a run of `rounds` rounds is scored over (rounds)."""
    return min(rounds, max(MIN_SCORE_ROUNDS, min(SCORE_ROUNDS, int(SCORE_FRACTION * rounds))))


def evaluated_rounds(rounds: int) -> list[int]:
    """The rounds evaluated: 0, every `CURVE_EVERY`-th, and the scored last rounds."""
    curve = set(range(0, rounds + 1, CURVE_EVERY))
    return sorted(curve | set(range(rounds - score_rounds(rounds) + 1, rounds + 1)))


def score(accuracy: dict[int, float], rounds: int) -> float:
    """Mean test accuracy (a fraction) over the last `score_rounds(rounds)` rounds."""
    return statistics.fmean(
        accuracy[t] for t in range(rounds - score_rounds(rounds) + 1, rounds + 1)
    )


def run_once(
    arm: Arm, steps: StepSizes, availability: str, seed: int, rounds: int, clients: int
) -> dict[int, float]:
    """Test accuracy (a fraction) after each evaluated round of one run."""
    config = RunConfig(
        strategy="fedau",
        fedau_mode=arm.mode,
        fedau_cutoff=arm.cutoff,
        fedau_num_clients=clients,  # N is known here, as in the paper's setting
        partitioner="dirichlet",
        dirichlet_alpha=0.1,
        local_steps=5,
        batch_size=16,
        lr=steps.lr,
        server_lr=steps.server_lr,
        seed=seed,
        availability=availability,
        min_clients=1,
    )
    nodes = [{"partition-id": i, "num-partitions": clients} for i in range(clients)]
    grid = InProcessGrid(client_app, nodes, config.to_mapping())
    return run_rounds_at(config, grid, rounds, set(evaluated_rounds(rounds)))


def grid_of(arm: Arm) -> list[StepSizes]:
    """The step sizes tried for `arm` when tuning."""
    servers = SERVER_LRS.get(arm.name, (1.0,))
    return [StepSizes(lr, server) for server in servers for lr in CLIENT_LRS]


def tune(
    arm: Arm, availability: str, seed: int, rounds: int, clients: int, log: Callable[[str], None]
) -> StepSizes:
    """The grid point with the best score of one run of `rounds` rounds (ties: the first)."""
    scores = {}
    for steps in grid_of(arm):
        scores[steps] = score(run_once(arm, steps, availability, seed, rounds, clients), rounds)
        log(f"  tune {arm.name} lr {steps.describe()}: {100 * scores[steps]:.2f}")
    return max(scores, key=lambda s: scores[s])


def parse_fixed(texts: Sequence[str]) -> dict[str, StepSizes]:
    """`ARM=LR[:SERVER_LR]` options as {arm: step sizes}; a bad one raises SystemExit."""
    names = [a.name for a in ARMS]
    fixed = {}
    for text in texts:
        name, _, value = text.partition("=")
        lr, _, server = value.partition(":")
        try:
            steps = StepSizes(float(lr), float(server or 1.0))
        except ValueError:
            steps = None
        if name not in names or steps is None or not (steps.lr > 0 and steps.server_lr > 0):
            raise SystemExit(
                f"--lr {text!r} is not ARM=LR[:SERVER_LR] with LR, SERVER_LR > 0; "
                f"arms: {', '.join(names)}"
            )
        fixed[name] = steps
    return fixed


def fmt(values: Sequence[float]) -> str:
    """Mean ± std of fractions, in percent."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * std:.2f}"


def goal_lines(scores: dict[str, list[float]]) -> list[str]:
    """The two goals for each FedAU arm, on the mean scores, with met or MISSED."""
    mean = {name: statistics.fmean(values) for name, values in scores.items()}
    lines = []
    for name in ("fedau", "fedau-K50"):
        # At the printed precision, so that a printed -1.00 never reads MISSED.
        gain = round(100 * (mean[name] - mean["participants"]), 2)
        gap = round(100 * (mean[name] - mean["known-prob"]), 2)
        lines.append(
            f"{name} - participants: {gain:+.2f} points (goal >= +3: "
            f"{'met' if gain >= 3 else 'MISSED'})"
        )
        lines.append(
            f"{name} - known-prob: {gap:+.2f} points (goal >= -1: "
            f"{'met' if gap >= -1 else 'MISSED'})"
        )
    return lines


def plot(curves: dict[str, dict[str, list[dict[int, float]]]], path: Path) -> None:
    """Mean test accuracy over seeds vs round, one panel per pattern, to a PNG at `path`."""
    fig, axes = plots.pyplot().subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for ax, (pattern, arms) in zip(axes[0], curves.items(), strict=True):
        for name, runs in arms.items():
            rounds = sorted(runs[0])
            ax.plot(
                rounds, [100 * statistics.fmean(r[t] for r in runs) for t in rounds], label=name
            )
        ax.set_title(pattern)
        ax.set_xlabel("round")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%), mean over seeds")
    axes[0][0].legend(loc="lower right")
    plots.save(fig, path)


def main() -> None:
    """Tune, then run every (pattern, arm, seed); print the tables and the goal lines."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..SEEDS-1")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--mean-p", type=float, default=0.1, help="target mean participation")
    parser.add_argument("--patterns", default=",".join(PATTERNS))
    parser.add_argument("--tune-rounds", type=int, default=500, help="0: no tuning (lr 0.1)")
    parser.add_argument("--tune-seed", type=int, default=100)
    parser.add_argument("--tune-pattern", default="bernoulli", choices=list(PATTERNS))
    parser.add_argument("--lr", action="append", default=[], metavar="ARM=LR[:SERVER_LR]")
    parser.add_argument("--plot", type=Path, help="write the accuracy curves to this PNG")
    parser.add_argument("--json", type=Path, help="write every evaluated accuracy here")
    parser.add_argument(
        "--from-json",
        type=Path,
        action="append",
        default=[],
        metavar="JSON",
        help="run nothing: print the tables and goals of runs saved with --json (several "
        "merge their patterns) and draw them with --plot",
    )
    args = parser.parse_args()
    patterns = args.patterns.split(",")
    if unknown := [p for p in patterns if p not in PATTERNS]:
        raise SystemExit(f"--patterns: {unknown[0]!r} is not known; allowed: {', '.join(PATTERNS)}")
    fixed = parse_fixed(args.lr)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)

    def log(line: str) -> None:
        print(line, flush=True)

    if args.from_json:
        rescore(args.from_json, args.mean_p, args.plot, log)
        return
    log(
        f"{args.clients} clients, Dirichlet 0.1, {args.rounds} rounds, seeds 0..{args.seeds - 1},"
        f" label-correlated participation with mean about {args.mean_p}; score: mean test "
        f"accuracy over the last {score_rounds(args.rounds)} rounds"
    )
    steps = tune_all(args, fixed, log)
    log(
        "step sizes (lr[:server lr]): " + ", ".join(f"{a}={s.describe()}" for a, s in steps.items())
    )
    curves: dict[str, dict[str, list[dict[int, float]]]] = {}
    for pattern in patterns:
        availability = PATTERNS[pattern].format(m=args.mean_p)
        curves[pattern] = {}
        for arm in ARMS:
            started = time.perf_counter()
            curves[pattern][arm.name] = [
                run_once(arm, steps[arm.name], availability, seed, args.rounds, args.clients)
                for seed in range(args.seeds)
            ]
            log(f"  [{pattern}] {arm.name}: {time.perf_counter() - started:.0f} s")
        report(pattern, availability, curves[pattern], steps, args.rounds, log)
        if args.json:  # after each pattern, so a long run that is stopped keeps what it did
            described = {a: s.describe() for a, s in steps.items()}
            args.json.write_text(json.dumps({"steps": described, "accuracy": curves}))
    if args.plot:
        plot(curves, args.plot)


def rescore(
    paths: Sequence[Path], mean_p: float, plot_path: Path | None, log: Callable[[str], None]
) -> None:
    """Print the tables and goal lines of runs saved with `--json`; draw them to `plot_path`.

    Each run is scored over its own number of rounds (its last evaluated round).
    """
    curves: dict[str, dict[str, list[dict[int, float]]]] = {}
    for path in paths:
        saved = json.loads(path.read_text())
        steps = parse_fixed([f"{arm}={text}" for arm, text in saved["steps"].items()])
        for pattern, arms in saved["accuracy"].items():
            curves[pattern] = {
                arm: [{int(t): accuracy for t, accuracy in run.items()} for run in runs]
                for arm, runs in arms.items()
            }
            rounds = max(curves[pattern][ARMS[0].name][0])
            availability = PATTERNS[pattern].format(m=mean_p)
            report(pattern, availability, curves[pattern], steps, rounds, log)
    if plot_path:
        plot(curves, plot_path)


def tune_all(
    args: argparse.Namespace, fixed: dict[str, StepSizes], log: Callable[[str], None]
) -> dict[str, StepSizes]:
    """Each arm's step sizes: fixed by `--lr`, tuned, or the untuned default."""
    steps = {}
    tuning = PATTERNS[args.tune_pattern].format(m=args.mean_p)
    for arm in ARMS:
        if arm.name in fixed:
            steps[arm.name] = fixed[arm.name]
        elif args.tune_rounds > 0:
            log(f"tuning {arm.name} on {tuning}, seed {args.tune_seed}, {args.tune_rounds} rounds")
            steps[arm.name] = tune(arm, tuning, args.tune_seed, args.tune_rounds, args.clients, log)
        else:
            steps[arm.name] = StepSizes(DEFAULT_LR)
    return steps


def report(
    pattern: str,
    availability: str,
    runs: dict[str, list[dict[int, float]]],
    steps: dict[str, StepSizes],
    rounds: int,
    log: Callable[[str], None],
) -> None:
    """Print one pattern's table (score and last round, mean ± std over seeds) and goals."""
    scores = {name: [score(r, rounds) for r in seeds] for name, seeds in runs.items()}
    log(f'\n## {pattern} (`availability = "{availability}"`)\n')
    log(f"| arm | lr[:server lr] | last-{score_rounds(rounds)}-round mean (%) | last round (%) |")
    log("| --- | --- | --- | --- |")
    for name, seeds in runs.items():
        last = fmt([r[rounds] for r in seeds])
        log(f"| {name} | {steps[name].describe()} | {fmt(scores[name])} | {last} |")
    log("")
    for line in goal_lines(scores):
        log(f"[{pattern}] {line}")
    log("")


if __name__ == "__main__":
    main()
