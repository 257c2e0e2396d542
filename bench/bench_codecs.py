"""Benchmark every codec: size on a 1M-parameter update, encode/decode speed on 16M values.

Sizes are the whole serialized `CompressedUpdate` of a dense 1,000,000-parameter update (two
matrices, a conv kernel, biases; standard normal), in bits per parameter, against the size
goals of docs/benchmarks.md.

Speeds are timed on 16,000,000 float32 values shaped like a model's layers. Each repetition
times, back to back on the same arrays, a plain fp32 -> bf16 -> fp32 cast (the reference of
the 4x goal), a memcpy into preallocated arrays (``np.copyto``: the memory bandwidth floor),
the codec's encode and its decode. Times are median, min and max over the repetitions, and a
ratio divides a codec's median by the median of the casts (or copies) interleaved with it.
With a stochastic-rounding codec in the list, two more rows time drawing 16M uniforms
alone (``torch.rand`` and fedq's stream), the floor of every ``:sr`` encode.

Usage (from the repository root):
    python bench/bench_codecs.py [--reps 5] [--codecs int4,mxfp4_e2m1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_formats import _machine

from quant import Codec
from quant.uniforms import Uniforms

SIZE_SHAPES = [(512, 1024), (400, 1000), (64, 32, 3, 3), (1024,), (10,), (64,), (56182,)]
SIZE_PARAMETERS = 1_000_000
# Two large projections, a matrix whose rows (940 = 14 * 64 + 44 = 29 * 32 + 12) end in a
# short block, a conv kernel (fan-in 2304) and biases.
SPEED_SHAPES = [
    (4096, 2048),
    (2048, 2048),
    (3000, 940),
    (256, 256, 3, 3),
    (4096,),
    (2048,),
    (1120,),
]
SPEED_PARAMETERS = 16_000_000
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
# docs/benchmarks.md: encode and decode each within this factor of the bf16 round-trip cast.
SPEED_GOAL = 4.0
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


def _update(shapes: list[tuple[int, ...]], parameters: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    assert sum(a.size for a in arrays) == parameters
    return arrays


def _ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - start)


def _spread(times: list[float]) -> str:
    return f"{statistics.median(times):.1f} ({min(times):.1f}–{max(times):.1f})"


def size_table(codecs: tuple[str, ...]) -> list[str]:
    """Markdown rows: bits per parameter of each codec on the 1M update, with its goal."""
    arrays = _update(SIZE_SHAPES, SIZE_PARAMETERS)
    rows = ["| codec | bits/param | size goal |", "| --- | --- | --- |"]
    for spec in codecs:
        data = Codec.from_spec(spec).encode(arrays, generator=torch.Generator().manual_seed(0))
        bits = 8 * len(data) / SIZE_PARAMETERS
        goal = SIZE_GOALS.get(spec)
        verdict = "" if goal is None else f"<= {goal}: {'met' if bits <= goal else 'MISSED'}"
        rows.append(f"| {spec} | {bits:.3f} | {verdict} |")
    return rows


def speed_table(codecs: tuple[str, ...], reps: int) -> list[str]:
    """Markdown rows: encode and decode ms of each codec on 16M values, against cast and copy."""
    arrays = _update(SPEED_SHAPES, SPEED_PARAMETERS)
    tensors = [torch.from_numpy(a) for a in arrays]
    copies = [np.empty_like(a) for a in arrays]

    def cast() -> None:
        for t in tensors:
            t.to(torch.bfloat16).to(torch.float32)

    def memcpy() -> None:
        for a, c in zip(arrays, copies, strict=True):
            np.copyto(c, a)

    rows = [
        "| codec | encode ms | decode ms | encode / cast | decode / cast | encode / memcpy "
        f"| decode / memcpy | within {SPEED_GOAL:g}x of the cast |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    all_casts, all_copies = [], []
    for spec in codecs:
        codec = Codec.from_spec(spec)
        generator = torch.Generator().manual_seed(0)
        data = codec.encode(arrays, generator=generator)
        codec.decode(data)  # warm-up
        encode, decode, casts, copied = [], [], [], []
        for _ in range(reps):
            casts.append(_ms(cast))
            copied.append(_ms(memcpy))
            encode.append(_ms(lambda c=codec, g=generator: c.encode(arrays, generator=g)))
            decode.append(_ms(lambda c=codec, d=data: c.decode(d)))
        all_casts += casts
        all_copies += copied
        cast_ms, copy_ms = statistics.median(casts), statistics.median(copied)
        enc, dec = statistics.median(encode) / cast_ms, statistics.median(decode) / cast_ms
        met = "met" if max(enc, dec) <= SPEED_GOAL else "MISSED"
        rows.append(
            f"| {spec} | {_spread(encode)} | {_spread(decode)} | {enc:.1f}x | {dec:.1f}x | "
            f"{statistics.median(encode) / copy_ms:.1f}x | "
            f"{statistics.median(decode) / copy_ms:.1f}x | {met} |"
        )
        print(rows[-1], flush=True)
    rows.append(f"| fp32 → bf16 → fp32 cast | {_spread(all_casts)} | | 1.0x | | | | |")
    rows.append(f"| memcpy (`np.copyto`) | {_spread(all_copies)} | | | | 1.0x | | |")
    if any(Codec.from_spec(spec).spec.stochastic for spec in codecs):
        rows += _draw_rows(cast, reps)
    return rows


def _draw_rows(cast: Callable[[], None], reps: int) -> list[str]:
    """Rows: drawing stochastic rounding's 16M uniforms alone, against the cast.

    ``torch.rand`` (what `:sr` drew from before `quant/uniforms.py`) and fedq's stream,
    each into a preallocated float32 buffer, interleaved with the cast.
    """
    out = torch.empty(SPEED_PARAMETERS)
    stream = Uniforms(0)
    ways = {
        "16 M uniform draws: `torch.rand`": lambda: torch.rand(SPEED_PARAMETERS, out=out),
        "16 M uniform draws: fedq's stream (`quant/uniforms.py`)": lambda: stream.fill(out.numpy()),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    casts = []
    for _ in range(reps):
        casts.append(_ms(cast))
        for name, draw in ways.items():
            times[name].append(_ms(draw))
    cast_ms = statistics.median(casts)
    return [
        f"| {name} | {_spread(t)} | | {statistics.median(t) / cast_ms:.1f}x | | | | |"
        for name, t in times.items()
    ]


def main() -> None:
    """Print the size table (1M parameters) and the speed table (16M values)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per codec")
    parser.add_argument("--codecs", default=",".join(CODECS), help="comma-separated codec specs")
    parser.add_argument("--skip-sizes", action="store_true", help="print the speed table only")
    args = parser.parse_args()
    codecs = tuple(c for c in args.codecs.split(",") if c)
    if args.reps < 1 or not codecs:
        parser.error("--reps must be positive and --codecs not empty")
    print(f"machine: {_machine()}\n")
    if not args.skip_sizes:
        print(f"sizes: {SIZE_PARAMETERS:,} float32 parameters in {len(SIZE_SHAPES)} arrays\n")
        print("\n".join(size_table(codecs)) + "\n", flush=True)
    print(
        f"speed: {SPEED_PARAMETERS:,} float32 values in {len(SPEED_SHAPES)} arrays "
        f"{SPEED_SHAPES}; {args.reps} reps; median (min–max) ms\n",
        flush=True,
    )
    rows = speed_table(codecs, args.reps)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
