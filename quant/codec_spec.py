"""The codec spec string (run-config `compress`, `fedq demo --compress`), parsed once.

Grammar: stages joined by ``+``::

    [sparsifier "+"] value-format ["+ans"] ["+ef"]

    sparsifier   := ("topk" | "randk") ":" fraction          fraction in (0, 1]
    value-format := name (":" option)*
    option       := "block=" N | "scale=" ("e8m0" | "ue5m3") | "sr"

Value formats: ``fp32``, ``fp16``, ``bf16``, ``fp8_e4m3``, ``fp8_e5m2``, ``int8``, ``int4``,
every MX format (``mxfp8_e4m3`` ... ``mxint8``) and ``sign``. ``block=N`` sets the values
per scale of the block-scaled ones (defaults: 64 for int8/int4, 32 for MX, 512 for sign;
0 = one scale per tensor); ``scale=ue5m3`` selects the UE5M3 block scale of mxfp4/mxfp6;
``sr`` selects unbiased stochastic rounding. ``+ans`` adds the lossless entropy-coding stage
(:mod:`quant.entropy_coding`): the same values in fewer bytes. ``+ef`` asks the client for
error feedback: it does not change the bytes, only what the client does with the residual.
The two suffixes may come in either order; the canonical string has ``+ans`` first.

Examples: ``int4``, ``mxfp4_e2m1:scale=ue5m3``, ``sign+ef``, ``topk:0.01+int8+ef``,
``int4+ans``, ``topk:0.01+int8+ans+ef``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from quant.constants import FORMATS, REGISTRY, SCALE_E8M0, SCALES, FormatSpec

SPARSIFIERS: tuple[str, ...] = ("topk", "randk")
SIGN = "sign"
FP32 = "fp32"
# fp32 and sign are codec-only formats; the rest are quant.FORMATS.
VALUE_FORMATS: tuple[str, ...] = (FP32, *FORMATS, SIGN)
ERROR_FEEDBACK = "ef"
ENTROPY_CODING = "ans"

DEFAULT_BLOCK: dict[str, int] = {"int8": 64, "int4": 64, SIGN: 512}
MX_DEFAULT_BLOCK = 32


class CodecSpecError(ValueError):
    """A codec spec string that cannot be parsed; the message names the part and the choices."""


@dataclass(frozen=True)
class CodecSpec:
    """A validated codec spec. `describe()` gives its canonical string."""

    value_format: str
    block_size: int = 0
    scale: str = SCALE_E8M0
    stochastic: bool = False
    sparsifier: str | None = None
    fraction: float = 1.0
    error_feedback: bool = False
    entropy_coding: bool = False

    @property
    def format_spec(self) -> FormatSpec | None:
        """The number format of the values (None for fp32 and sign)."""
        return REGISTRY.get(self.value_format)

    @property
    def block_scaled(self) -> bool:
        """Whether values carry per-block scales (int8, int4, MX formats, sign)."""
        spec = self.format_spec
        return self.value_format == SIGN or (spec is not None and spec.block_scaled)

    def wire_name(self) -> str:
        """The canonical spec of the bytes (``+ans`` kept, ``+ef`` left out: it does not
        change them)."""
        stages = [f"{self.sparsifier}:{self.fraction:g}"] if self.sparsifier else []
        value = self.value_format
        spec = self.format_spec
        if self.block_scaled and not (spec and spec.is_mx and self.block_size == MX_DEFAULT_BLOCK):
            value += f":block={self.block_size}"
        if self.scale != SCALE_E8M0:
            value += f":scale={self.scale}"
        if self.stochastic:
            value += ":sr"
        suffix = [ENTROPY_CODING] if self.entropy_coding else []
        return "+".join([*stages, value, *suffix])

    def describe(self) -> str:
        """The canonical spec string; `parse_codec_spec(describe())` gives this spec back."""
        return self.wire_name() + (f"+{ERROR_FEEDBACK}" if self.error_feedback else "")


def parse_codec_spec(text: str, key: str = "compress") -> CodecSpec:
    """Parse a codec spec string (see the module docstring); raise CodecSpecError.

    ``key`` is the run-config key the spec came from, named in the error messages.
    """
    where = f"{key}={text!r}"
    if not isinstance(text, str) or not text.strip():
        raise CodecSpecError(f"{where} is empty; {_allowed()}")
    stages = [s.strip() for s in text.strip().split("+")]
    suffixes = set()
    while len(stages) > 1 and stages[-1] in (ERROR_FEEDBACK, ENTROPY_CODING):
        if stages[-1] in suffixes:
            raise CodecSpecError(f"{where}: '+{stages[-1]}' is given twice")
        suffixes.add(stages.pop())
    sparsifier, fraction = None, 1.0
    if len(stages) == 2:
        sparsifier, fraction = _parse_sparsifier(stages[0], where)
        stages = stages[1:]
    if len(stages) != 1:
        raise CodecSpecError(
            f"{where} has {len(stages)} value stages; expected "
            "[topk:F|randk:F+]FORMAT[:options][+ans][+ef]"
        )
    spec = _parse_value(stages[0], where, sparsifier, fraction)
    return replace(
        spec,
        error_feedback=ERROR_FEEDBACK in suffixes,
        entropy_coding=ENTROPY_CODING in suffixes,
    )


def _parse_sparsifier(stage: str, where: str) -> tuple[str, float]:
    name, _, arg = stage.partition(":")
    if name not in SPARSIFIERS:
        raise CodecSpecError(
            f"{where}: sparsifier {name!r} is not known; allowed: "
            f"{', '.join(SPARSIFIERS)} (as topk:0.01)"
        )
    try:
        fraction = float(arg)
    except ValueError:
        fraction = float("nan")
    if not 0.0 < fraction <= 1.0:
        raise CodecSpecError(f"{where}: {name} fraction {arg!r} must be a number in (0, 1]")
    return name, fraction


def _parse_value(stage: str, where: str, sparsifier: str | None, fraction: float) -> CodecSpec:
    name, *options = stage.split(":")
    if name not in VALUE_FORMATS:
        raise CodecSpecError(f"{where}: value format {name!r} is not known; {_allowed()}")
    spec = REGISTRY.get(name)
    block_scaled = name == SIGN or (spec is not None and spec.block_scaled)
    block = DEFAULT_BLOCK.get(name, MX_DEFAULT_BLOCK) if block_scaled else 0
    scale, stochastic = SCALE_E8M0, False
    for option in options:
        key, _, value = option.partition("=")
        if key == "block" and block_scaled:
            if not value.isdigit():
                raise CodecSpecError(
                    f"{where}: block={value!r} must be an integer >= 0 (0 = per tensor)"
                )
            block = int(value)
        elif key == "scale" and spec is not None and len(spec.scales) > 1:
            if value not in SCALES:
                raise CodecSpecError(
                    f"{where}: scale={value!r} is not known; allowed: {', '.join(SCALES)}"
                )
            scale = value
        elif key == "sr" and not value and name != FP32:
            stochastic = True
        else:
            raise CodecSpecError(
                f"{where}: option {option!r} does not apply to {name}; allowed: "
                f"{', '.join(_options_of(name, spec, block_scaled)) or 'none'}"
            )
    return CodecSpec(name, block, scale, stochastic, sparsifier, fraction)


def _options_of(name: str, spec: FormatSpec | None, block_scaled: bool) -> list[str]:
    options = ["block=N"] if block_scaled else []
    if spec is not None and len(spec.scales) > 1:
        options.append("scale=e8m0|ue5m3")
    if name != FP32:
        options.append("sr")
    return options


def _allowed() -> str:
    return (
        f"allowed value formats: {', '.join(VALUE_FORMATS)}; optional sparsifier "
        "topk:F or randk:F before it, +ans and +ef after it (e.g. topk:0.01+int8+ans+ef)"
    )
