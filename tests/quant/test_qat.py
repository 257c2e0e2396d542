"""Quantization-aware training layers: forward numerics, straight-through gradients, masters."""

import pytest
import torch
from torch import nn

from fedq.models import ModelSpec, build_model
from quant import fake_quantize
from quant.qat import QuantConv2d, QuantLinear, fake_quant_ste, quantize_model
from quant.training_spec import QuantSpec, TensorQuant, parse_quant_spec


def test_linear_forward_equals_the_product_of_quantized_operands():
    torch.manual_seed(0)
    layer = nn.Linear(64, 8)
    x = torch.randn(5, 64)
    spec = parse_quant_spec("w=mxfp4_e2m1,a=int8")
    quantized = QuantLinear.from_float(layer, spec, None)
    expected = nn.functional.linear(
        fake_quantize(x, "int8", axis=-1),
        fake_quantize(layer.weight.detach(), "mxfp4_e2m1", axis=-1),
        layer.bias,
    )
    torch.testing.assert_close(quantized(x), expected, atol=0, rtol=0)


def test_conv_blocks_run_over_each_output_channels_fan_in():
    torch.manual_seed(0)
    layer = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 8, 8)
    quantized = QuantConv2d.from_float(layer, parse_quant_spec("w=int4:block=0,a=fp8_e4m3"), None)
    w = fake_quantize(layer.weight.detach().reshape(6, -1), "int4", block_size=0).reshape(
        6, 4, 3, 3
    )
    expected = nn.functional.conv2d(fake_quantize(x, "fp8_e4m3"), w, layer.bias, padding=1)
    torch.testing.assert_close(quantized(x), expected, atol=0, rtol=0)


def test_straight_through_estimator_passes_gradients_unchanged():
    x = torch.linspace(-3, 3, 64, requires_grad=True)
    y = fake_quant_ste(x, TensorQuant("int4"), axis=-1)
    assert not torch.equal(y, x)  # the forward really rounds
    (y * torch.arange(64.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(64.0))


def test_gradient_quantization_rounds_the_backward_signal_only():
    torch.manual_seed(0)
    layer = nn.Linear(16, 32)
    x = torch.randn(4, 16, requires_grad=True)
    spec = QuantSpec(gradients=TensorQuant("int4", block_size=32, rounding="nearest_even"))
    quantized = QuantLinear.from_float(layer, spec, None)
    out = quantized(x)
    torch.testing.assert_close(out, layer(x), atol=0, rtol=0)
    upstream = torch.randn(4, 32)
    out.backward(upstream)
    expected = fake_quantize(upstream, "int4", block_size=32) @ layer.weight
    torch.testing.assert_close(x.grad, expected.detach(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_quantize_model_keeps_fp32_masters_and_state_dict_keys(name):
    model = build_model(ModelSpec(name), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    quantize_model(model, parse_quant_spec("w=mxfp4_e2m1,a=mxfp8_e4m3,g=fp8_e5m2"))
    kinds = {type(m) for m in model.modules()}
    assert nn.Linear not in kinds and nn.Conv2d not in kinds  # every layer replaced
    assert QuantLinear in kinds
    assert list(model.parameters()) == params, "the same fp32 tensors, not copies"
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(after[k].dtype == torch.float32 and torch.equal(after[k], before[k]) for k in before)
    # One SGD step updates the fp32 masters by amounts that are not on the low-bit grid.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(model(torch.rand(8, 8, 8)), torch.arange(8))
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(model.state_dict()[k], before[k]) for k in before)


def test_disabled_spec_leaves_the_model_alone():
    model = build_model(ModelSpec("mlp"), seed=0)
    assert quantize_model(model, QuantSpec()) is model
    assert all(type(m) is not QuantLinear for m in model.modules())
