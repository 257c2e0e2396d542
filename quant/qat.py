"""Quantization-aware training: Linear and Conv2d layers that compute in a low-bit format.

Weights and input activations are fake-quantized in the forward pass with a straight-through
estimator (the gradient of the rounding is taken as 1); the gradient arriving at each layer's
output can be quantized in the backward pass with stochastic rounding. Master weights and
optimizer state stay fp32: the parameters are the original fp32 tensors, so the state dict
(and what a client sends) is unchanged. Emulated on the CPU: the numerics are exact, the
speed-up of real low-bit kernels is not.

Blocks of a block-scaled format run along each layer's reduction dimension, as low-bit
matrix units consume them: the input features of a Linear weight and activation, the
(input channel x kernel) fan-in of a Conv2d weight and the channels of its input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional

from quant.formats import fake_quantize
from quant.training_spec import QuantSpec, TensorQuant


def fake_quant_ste(
    x: torch.Tensor,
    quant: TensorQuant | None,
    axis: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`x` rounded to `quant` in the forward pass; gradient passed straight through."""
    if quant is None:
        return x
    q = fake_quantize(
        x.detach(),
        quant.fmt,
        block_size=quant.block_size,
        axis=axis,
        rounding=quant.rounding,
        scale=quant.scale,
        generator=generator,
    )
    return x + (q - x).detach()


class _QuantizeGradient(torch.autograd.Function):
    """Identity forward; fake-quantizes the incoming gradient in backward."""

    @staticmethod
    def forward(ctx, x, quant, axis, generator):  # type: ignore[no-untyped-def]
        ctx.quant, ctx.axis, ctx.generator = quant, axis, generator
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        q = ctx.quant
        grad = fake_quantize(
            grad,
            q.fmt,
            block_size=q.block_size,
            axis=ctx.axis,
            rounding=q.rounding,
            scale=q.scale,
            generator=ctx.generator,
        )
        return grad, None, None, None


def quantize_gradient(
    x: torch.Tensor, quant: TensorQuant | None, axis: int, generator: torch.Generator | None
) -> torch.Tensor:
    """`x` unchanged; the gradient flowing back through it is rounded to `quant`."""
    if quant is None or not torch.is_grad_enabled():
        return x
    return _QuantizeGradient.apply(x, quant, axis, generator)


class QuantLinear(nn.Linear):
    """A Linear layer computing with fake-quantized weights, inputs and output gradients."""

    spec: QuantSpec
    generator: torch.Generator | None

    @classmethod
    def from_float(
        cls, layer: nn.Linear, spec: QuantSpec, generator: torch.Generator | None
    ) -> QuantLinear:
        """Wrap `layer`, sharing its fp32 parameters (no copy, same state-dict keys)."""
        quant = cls(layer.in_features, layer.out_features, bias=False, device="meta")
        quant.weight, quant.bias = layer.weight, layer.bias
        quant.spec, quant.generator = spec, generator
        return quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = Q_a(x) Q_w(W)^T + b, with Q_g applied to dL/dy in backward."""
        weight = fake_quant_ste(self.weight, self.spec.weights, -1, self.generator)
        x = fake_quant_ste(x, self.spec.activations, -1, self.generator)
        y = functional.linear(x, weight, self.bias)
        return quantize_gradient(y, self.spec.gradients, -1, self.generator)


class QuantConv2d(nn.Conv2d):
    """A Conv2d layer computing with fake-quantized weights, inputs and output gradients."""

    spec: QuantSpec
    generator: torch.Generator | None

    @classmethod
    def from_float(
        cls, layer: nn.Conv2d, spec: QuantSpec, generator: torch.Generator | None
    ) -> QuantConv2d:
        """Wrap `layer`, sharing its fp32 parameters (no copy, same state-dict keys)."""
        quant = cls(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=False,
            padding_mode=layer.padding_mode,
            device="meta",
        )
        quant.weight, quant.bias = layer.weight, layer.bias
        quant.spec, quant.generator = spec, generator
        return quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution of Q_a(x) with Q_w(W), with Q_g applied to dL/dy in backward."""
        # Blocks over the fan-in (in_channels/groups x kh x kw) of each output channel.
        fan_in = self.weight.reshape(self.out_channels, -1)
        weight = fake_quant_ste(fan_in, self.spec.weights, -1, self.generator)
        x = fake_quant_ste(x, self.spec.activations, 1, self.generator)
        y = self._conv_forward(x, weight.reshape(self.weight.shape), self.bias)
        return quantize_gradient(y, self.spec.gradients, 1, self.generator)


_QUANTIZED_LAYERS: dict[type[nn.Module], Callable[..., nn.Module]] = {
    nn.Linear: QuantLinear.from_float,
    nn.Conv2d: QuantConv2d.from_float,
}


def quantize_model(
    model: nn.Module, spec: QuantSpec, generator: torch.Generator | None = None
) -> nn.Module:
    """Replace, in place, every Linear and Conv2d of `model` by its quantized twin.

    The parameters are shared, so `model.state_dict()` keeps its keys and fp32 values and
    an optimizer built afterwards updates the same tensors. With a disabled spec the model
    is returned untouched. `generator` drives stochastic rounding (reproducible rounds).
    """
    if not spec.enabled:
        return model
    for name, child in model.named_children():
        build = _QUANTIZED_LAYERS.get(type(child))
        if build is not None:
            setattr(model, name, build(child, spec, generator))
        else:
            quantize_model(child, spec, generator)
    return model
