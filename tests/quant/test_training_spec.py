"""Parsing the quantization spec of a run."""

import pytest

from quant.training_spec import QuantSpec, QuantSpecError, TensorQuant, parse_quant_spec


@pytest.mark.parametrize("text", ["", "fp32", "none", "  FP32 "])
def test_no_quantization(text):
    spec = parse_quant_spec(text)
    assert spec == QuantSpec() and not spec.enabled and spec.describe() == "fp32"


def test_full_spec_with_options():
    spec = parse_quant_spec("w=mxfp4_e2m1:block=16:scale=ue5m3,a=int8:block=0,g=fp8_e5m2")
    assert spec.weights == TensorQuant("mxfp4_e2m1", 16, "ue5m3", "nearest_even")
    assert spec.activations == TensorQuant("int8", 0, "e8m0", "nearest_even")
    # Gradients are always rounded stochastically (unbiased).
    assert spec.gradients == TensorQuant("fp8_e5m2", 32, "e8m0", "stochastic")


@pytest.mark.parametrize(
    "text", ["w=int8", "w=mxfp4_e2m1:block=16:scale=ue5m3,a=mxfp8_e4m3:sr,g=bf16"]
)
def test_describe_round_trips(text):
    spec = parse_quant_spec(text)
    assert parse_quant_spec(spec.describe()) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("w=int3", r"quant w='int3' is not a known format; allowed: bf16, fp16"),
        ("q=int8", r"ROLE one of w, a, g"),
        ("int8", r"must be ROLE=FORMAT"),
        ("w=int8,w=int4", r"quant role 'w' is given twice"),
        ("w=int8:block=-1", r"quant option 'block=-1' of w=int8 is not valid"),
        ("w=int8:round=up", r"allowed: block=<int >= 0>, scale=e8m0\|ue5m3, sr"),
        ("w=int8:scale=ue5m3", r"scale=ue5m3 applies only to mxfp6_e3m2, mxfp6_e2m3, mxfp4_e2m1"),
    ],
)
def test_malformed_specs_say_what_is_wrong(text, message):
    with pytest.raises(QuantSpecError, match=message):
        parse_quant_spec(text)
