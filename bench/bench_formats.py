"""Benchmark quant.fake_quantize against a plain bf16 round-trip cast.

For every format (and the UE5M3-scaled MX variants) this times ``fake_quantize`` on one
float32 tensor and, interleaved with it, ``x.to(torch.bfloat16).to(torch.float32)`` on the
same tensor, so both see the same machine load. The goal is "within 4x of the cast".

Usage (from the repository root):
    python bench/bench_formats.py [--elements 16000000] [--reps 5] [--rounding nearest_even]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

# Allow `python bench/bench_formats.py` without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant import FORMATS, fake_quantize
from quant.constants import REGISTRY, ROUNDINGS, SCALE_UE5M3

GOAL_RATIO = 4.0


def _machine() -> str:
    """One line describing cores, memory and CPU model (Linux /proc where available)."""
    model = platform.processor() or "unknown CPU"
    mem_gib = float("nan")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = int(line.split()[1]) / 2**20
                break
    except OSError:
        pass
    return (
        f"{model}; {os.cpu_count()} cores (torch threads {torch.get_num_threads()}); "
        f"{mem_gib:.1f} GiB RAM; torch {torch.__version__}; Python {platform.python_version()}"
    )


def _time_ms(fn: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _cases() -> list[tuple[str, str, str]]:
    """(label, format, scale) for every format plus each UE5M3-capable MX format."""
    cases = [(name, name, "e8m0") for name in FORMATS]
    cases += [
        (f"{name}+ue5m3", name, SCALE_UE5M3)
        for name in FORMATS
        if SCALE_UE5M3 in REGISTRY[name].scales
    ]
    return cases


def run(elements: int, reps: int, rounding: str) -> list[tuple[str, list[float], list[float]]]:
    """Time every case; returns (label, quantize times ms, cast times ms)."""
    x = torch.randn(elements, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)

    def cast() -> torch.Tensor:
        return x.to(torch.bfloat16).to(torch.float32)

    results = []
    for label, fmt, scale in _cases():

        def quantize(fmt: str = fmt, scale: str = scale) -> torch.Tensor:
            return fake_quantize(x, fmt, rounding=rounding, scale=scale, generator=generator)

        quantize(), cast()  # warm-up: first-call dispatch and allocator growth
        q_times, c_times = [], []
        for _ in range(reps):
            c_times.append(_time_ms(cast))
            q_times.append(_time_ms(quantize))
        results.append((label, q_times, c_times))
    return results


def report(results: list[tuple[str, list[float], list[float]]]) -> str:
    """Format the results table and the list of formats that miss the goal."""
    header = (
        f"{'format':<20} {'median ms':>10} {'min ms':>9} {'max ms':>9} "
        f"{'cast med ms':>12} {'ratio':>7}  goal<={GOAL_RATIO:g}x"
    )
    lines = [header, "-" * len(header)]
    missed = []
    for label, q_times, c_times in results:
        ratio = statistics.median(q_times) / statistics.median(c_times)
        ok = ratio <= GOAL_RATIO
        if not ok:
            missed.append(f"{label} ({ratio:.2f}x)")
        lines.append(
            f"{label:<20} {statistics.median(q_times):>10.1f} {min(q_times):>9.1f} "
            f"{max(q_times):>9.1f} {statistics.median(c_times):>12.1f} {ratio:>6.2f}x  "
            f"{'ok' if ok else 'MISSED'}"
        )
    all_casts = [t for _, _, c_times in results for t in c_times]
    lines.append("")
    lines.append(
        f"bf16 round-trip cast over the whole run: median {statistics.median(all_casts):.1f} ms, "
        f"min {min(all_casts):.1f}, max {max(all_casts):.1f} (ratios use each row's own casts)"
    )
    if missed:
        lines.append(f"Formats missing the {GOAL_RATIO:g}x-of-cast goal: {', '.join(missed)}")
    else:
        lines.append(f"All formats are within {GOAL_RATIO:g}x of the bf16 round-trip cast.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=16_000_000, help="tensor size")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per format")
    parser.add_argument("--rounding", choices=ROUNDINGS, default="nearest_even")
    args = parser.parse_args(argv)
    if args.elements < 1 or args.reps < 1:
        parser.error("--elements and --reps must be positive")
    print(f"machine: {_machine()}")
    print(
        f"tensor: {args.elements:,} float32 elements, {args.reps} reps, rounding={args.rounding}, "
        "block_size=32; baseline: x.to(bfloat16).to(float32), interleaved"
    )
    print()
    print(report(run(args.elements, args.reps, args.rounding)))


if __name__ == "__main__":
    main()
