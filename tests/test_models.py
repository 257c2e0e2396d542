"""Models: shapes, sizes, seeding, your own factory, and evaluation."""

import numpy as np
import pytest
import torch

from fedq.data import LabeledArrays, load_digits_split
from fedq.errors import ConfigError
from fedq.models import BUILT_IN, ModelSpec, build_model, count_parameters, evaluate


@pytest.mark.parametrize(("name", "params"), [("mlp", 9_610), ("cnn", 38_282)])
def test_the_digits_models_keep_their_sizes(name, params):
    model = build_model(ModelSpec(name), seed=0)
    assert model(torch.zeros(5, 8, 8)).shape == (5, 10)
    assert count_parameters(model) == params


@pytest.mark.parametrize(
    ("name", "shape", "classes", "params"),
    [
        ("mlp", (20,), 3, 20 * 128 + 128 + 128 * 3 + 3),
        ("cnn", (3, 16, 16), 5, None),
        ("resnet", (3, 32, 32), 10, 696_234),
        ("resnet", (8, 8), 10, None),
    ],
)
def test_every_built_in_follows_the_declared_shape_and_classes(name, shape, classes, params):
    model = build_model(ModelSpec(name, shape, classes), seed=0)
    assert model(torch.zeros(2, *shape)).shape == (2, classes)
    if params is not None:
        assert count_parameters(model) == params
    # No buffers: every entry of the state dict is a float parameter (codecs, averaging).
    assert {k for k, _ in model.named_parameters()} == set(model.state_dict())


@pytest.mark.parametrize("name", BUILT_IN)
def test_the_seed_alone_fixes_the_initial_weights(name):
    spec = ModelSpec(name)
    a, b, c = (build_model(spec, seed) for seed in (1, 1, 2))
    for (ka, va), (_, vb), (_, vc) in zip(
        a.state_dict().items(), b.state_dict().items(), c.state_dict().items(), strict=True
    ):
        assert torch.equal(va, vb), ka
        if va.numel() > 1 and va.std() > 0:  # not a norm layer's constant start
            assert not torch.equal(va, vc), ka


def test_build_model_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(ModelSpec("cnn"), seed=7)
    assert torch.equal(torch.rand(3), expected)


def tiny_factory(input_shape, num_classes):
    """A model factory as a user writes one (used by the test below by its module path)."""
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(int(np.prod(input_shape)), num_classes)
    )


def not_a_model(input_shape, num_classes):
    """A factory that returns the wrong thing."""
    return "model"


def test_a_python_factory_builds_any_torch_module():
    model = build_model(ModelSpec("python:tests.test_models:tiny_factory", (4, 4), 3), seed=0)
    assert model(torch.zeros(2, 4, 4)).shape == (2, 3)
    with pytest.raises(ConfigError, match=r"returned str, not a torch\.nn\.Module"):
        build_model(ModelSpec("python:tests.test_models:not_a_model"), seed=0)
    with pytest.raises(ConfigError, match="cannot be loaded"):
        build_model(ModelSpec("python:tests.no_such_module:f"), seed=0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (dict(name="vit"), "model='vit' is not known; allowed: mlp, cnn, resnet, python:"),
        (dict(name="mlp", input_shape=(0, 8)), "input-shape='0,8' is not a shape"),
        (dict(name="mlp", input_shape=(1, 2, 3, 4)), "input-shape='1,2,3,4' is not a shape"),
        (dict(name="mlp", num_classes=1), "num-classes=1 must be >= 2"),
        (dict(name="cnn", input_shape=(64,)), "model='cnn' needs an image input-shape"),
    ],
)
def test_a_bad_model_spec_is_refused_with_the_reason(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelSpec(**spec)


def test_evaluate_reports_loss_and_accuracy():
    _, test = load_digits_split()
    model = build_model(ModelSpec("mlp"), seed=0)
    loss, accuracy = evaluate(model, test)
    assert 0.0 <= accuracy <= 1.0
    assert loss == pytest.approx(np.log(10), rel=0.1)  # an untrained model is near uniform
    # A model that always predicts class 3 scores exactly the share of 3s.
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model[-1].bias[3] = 10.0
    _, accuracy = evaluate(model, test)
    assert accuracy == pytest.approx(np.mean(test.y == 3))


def test_evaluate_refuses_empty_data():
    empty = LabeledArrays(np.zeros((0, 8, 8), np.float32), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="empty"):
        evaluate(build_model(ModelSpec("mlp"), 0), empty)


def test_quantized_training_and_every_codec_work_on_the_resnet():
    from quant import Codec
    from quant.qat import quantize_model
    from quant.training_spec import parse_quant_spec

    spec = ModelSpec("resnet", (3, 16, 16), 4)
    model = quantize_model(build_model(spec, seed=0), parse_quant_spec("w=mxfp4_e2m1,a=int8"))
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 16, 16)), torch.tensor([0, 3]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    arrays = [v.numpy() for v in model.state_dict().values()]
    for codec in ("int4", "mxfp4_e2m1", "topk:0.1+int8", "sign"):
        decoded = Codec.from_spec(codec).decode(Codec.from_spec(codec).encode(arrays))
        assert [d.shape for d in decoded] == [a.shape for a in arrays]
