"""The quantization spec a run trains under: which format for weights, activations, gradients.

Written as one string so it fits a Flower run-config value and a CLI flag:

    "w=mxfp4_e2m1,a=mxfp8_e4m3,g=fp8_e5m2"
    "w=int4:block=32,a=int8:block=0"
    "w=mxfp4_e2m1:block=16:scale=ue5m3"
    ""  or  "fp32"   (no quantization)

Roles: `w` weights of Linear/Conv2d layers, `a` their input activations (both fake-quantized
in the forward pass, gradients passed straight through), `g` the gradient flowing back into
each such layer's output (quantized in the backward pass). Options per role: `block=N`
(elements per scale block, 0 = one scale per tensor), `scale=e8m0|ue5m3`, and `sr`
(stochastic rounding). Gradients always use stochastic rounding: it keeps them unbiased.
"""

from __future__ import annotations

from dataclasses import dataclass

from quant.constants import FORMATS, REGISTRY

ROLES = {"w": "weights", "a": "activations", "g": "gradients"}
OPTIONS = ("block", "scale", "sr")
SCALES = ("e8m0", "ue5m3")
NO_QUANT = ("", "fp32", "none")


class QuantSpecError(ValueError):
    """A quantization spec string is malformed; the message names the bad part."""


@dataclass(frozen=True)
class TensorQuant:
    """How one kind of tensor is quantized: format, block size, scale kind, rounding."""

    fmt: str
    block_size: int = 32
    scale: str = "e8m0"
    rounding: str = "nearest_even"

    def describe(self) -> str:
        """The canonical spec fragment, e.g. `mxfp4_e2m1:block=16:scale=ue5m3`."""
        parts = [self.fmt]
        if self.block_size != 32:
            parts.append(f"block={self.block_size}")
        if self.scale != "e8m0":
            parts.append(f"scale={self.scale}")
        if self.rounding == "stochastic":
            parts.append("sr")
        return ":".join(parts)


@dataclass(frozen=True)
class QuantSpec:
    """Formats for weights, activations and gradients; None means that role stays fp32."""

    weights: TensorQuant | None = None
    activations: TensorQuant | None = None
    gradients: TensorQuant | None = None

    @property
    def enabled(self) -> bool:
        """Whether anything is quantized at all."""
        return any((self.weights, self.activations, self.gradients))

    def describe(self) -> str:
        """Canonical spec string (parses back to an equal spec); `fp32` when disabled."""
        parts = [
            f"{role}={quant.describe()}"
            for role, quant in zip(
                "wag", (self.weights, self.activations, self.gradients), strict=True
            )
            if quant is not None
        ]
        return ",".join(parts) or "fp32"


def parse_quant_spec(text: str) -> QuantSpec:
    """Parse a spec string (see the module docstring); raise `QuantSpecError` when malformed."""
    text = text.strip()
    if text.lower() in NO_QUANT:
        return QuantSpec()
    roles: dict[str, TensorQuant] = {}
    for item in text.split(","):
        role, sep, body = item.strip().partition("=")
        if not sep or role not in ROLES:
            raise QuantSpecError(
                f"quant entry {item.strip()!r} must be ROLE=FORMAT with ROLE one of "
                f"{', '.join(ROLES)} (e.g. 'w=mxfp4_e2m1,a=mxfp8_e4m3')"
            )
        if role in roles:
            raise QuantSpecError(f"quant role {role!r} is given twice")
        roles[role] = _parse_tensor_quant(role, body)
    return QuantSpec(roles.get("w"), roles.get("a"), roles.get("g"))


def _parse_tensor_quant(role: str, body: str) -> TensorQuant:
    fmt, *options = body.split(":")
    if fmt not in FORMATS:
        raise QuantSpecError(
            f"quant {role}={fmt!r} is not a known format; allowed: {', '.join(FORMATS)}"
        )
    block, scale, stochastic = 32, "e8m0", role == "g"
    for option in options:
        key, _, value = option.partition("=")
        if key == "block" and value.isdigit():
            block = int(value)
        elif key == "scale" and value in SCALES:
            scale = value
        elif key == "sr" and not value:
            stochastic = True
        else:
            raise QuantSpecError(
                f"quant option {option!r} of {role}={fmt} is not valid; allowed: "
                f"block=<int >= 0>, scale={'|'.join(SCALES)}, sr"
            )
    if scale == "ue5m3" and "ue5m3" not in REGISTRY[fmt].scales:
        allowed = [name for name, spec in REGISTRY.items() if "ue5m3" in spec.scales]
        raise QuantSpecError(
            f"quant {role}={fmt}: scale=ue5m3 applies only to {', '.join(allowed)}"
        )
    return TensorQuant(fmt, block, scale, "stochastic" if stochastic else "nearest_even")
