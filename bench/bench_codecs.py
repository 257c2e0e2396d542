"""Benchmark every codec on a dense 1M-parameter update: size and encode/decode speed.

The update is a realistic layer mix (two matrices, a conv kernel, biases; 1,000,000
parameters, standard normal). Sizes are the whole serialized `CompressedUpdate`, in bits per
parameter, against the size goals of docs/benchmarks.md. Speeds are medians over repetitions,
each interleaved with a plain fp32 -> bf16 -> fp32 cast of the same arrays, and reported as a
ratio to that cast (same data, same machine load).

Usage (from the repository root):
    python bench/bench_codecs.py [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_formats import _machine

from quant import Codec

SHAPES = [(512, 1024), (400, 1000), (64, 32, 3, 3), (1024,), (10,), (64,), (56182,)]
PARAMETERS = 1_000_000
# docs/benchmarks.md: bits per parameter on a dense 1M-parameter update, everything counted.
SIZE_GOALS = {
    "fp16": 16.1,
    "bf16": 16.1,
    "int8": 8.6,
    "int4": 4.6,
    "mxfp4_e2m1": 4.3,
    "sign": 1.1,
    "topk:0.01+int8": 0.35,
}
CODECS = (
    "fp32",
    "fp16",
    "bf16",
    "int8",
    "int4",
    "int4:sr",
    "mxfp8_e4m3",
    "mxfp6_e3m2",
    "mxfp4_e2m1",
    "mxfp4_e2m1:scale=ue5m3",
    "sign",
    "sign:sr",
    "topk:0.05+int8",
    "topk:0.01+int8",
    "randk:0.01+int8",
)


def _update() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    assert sum(a.size for a in arrays) == PARAMETERS
    return arrays


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    """Print one row per codec: bits per parameter, goal, encode and decode speed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per codec")
    args = parser.parse_args()
    arrays = _update()
    tensors = [torch.from_numpy(a) for a in arrays]

    def cast() -> None:
        for t in tensors:
            t.to(torch.bfloat16).to(torch.float32)

    print(f"machine: {_machine()}")
    print(f"update: {PARAMETERS:,} float32 parameters in {len(SHAPES)} arrays; reps {args.reps}\n")
    print("| codec | bits/param | goal | encode ms | decode ms | encode / cast | decode / cast |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for spec in CODECS:
        codec = Codec.from_spec(spec)
        generator = torch.Generator().manual_seed(0)
        data = codec.encode(arrays, generator=generator)
        codec.decode(data)  # warm-up
        encode, decode, casts = [], [], []
        for _ in range(args.reps):
            casts.append(_seconds(cast))
            encode.append(_seconds(lambda c=codec, g=generator: c.encode(arrays, generator=g)))
            decode.append(_seconds(lambda c=codec, d=data: c.decode(d)))
        bits = 8 * len(data) / PARAMETERS
        goal = SIZE_GOALS.get(spec)
        verdict = "" if goal is None else f"<= {goal}: {'met' if bits <= goal else 'MISSED'}"
        cast_s = statistics.median(casts)
        encode_s, decode_s = statistics.median(encode), statistics.median(decode)
        print(
            f"| {spec} | {bits:.3f} | {verdict} | {1e3 * encode_s:.1f} | {1e3 * decode_s:.1f} | "
            f"{encode_s / cast_s:.1f}x | {decode_s / cast_s:.1f}x |",
            flush=True,
        )
    print(f"\nbf16 round-trip cast of the same arrays: median {1e3 * cast_s:.2f} ms (last codec's)")


if __name__ == "__main__":
    main()
