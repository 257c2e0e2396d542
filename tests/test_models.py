"""Models: shapes, sizes, seeding and evaluation."""

import numpy as np
import pytest
import torch

from fedq.data import LabeledArrays, load_digits_split
from fedq.models import MODELS, build_model, count_parameters, evaluate


@pytest.mark.parametrize(("name", "params"), [("mlp", 9_610), ("cnn", 38_282)])
def test_models_map_8x8_images_to_10_logits(name, params):
    model = build_model(name, seed=0)
    assert model(torch.zeros(5, 8, 8)).shape == (5, 10)
    assert count_parameters(model) == params


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_seed_alone_fixes_the_initial_weights(name):
    a, b, c = build_model(name, 1), build_model(name, 1), build_model(name, 2)
    for (ka, va), (_, vb), (_, vc) in zip(
        a.state_dict().items(), b.state_dict().items(), c.state_dict().items(), strict=True
    ):
        assert torch.equal(va, vb), ka
        if va.numel() > 1:
            assert not torch.equal(va, vc), ka


def test_build_model_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("cnn", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match=r"model='vit' is not known; allowed: mlp, cnn"):
        build_model("vit", seed=0)


def test_evaluate_reports_loss_and_accuracy():
    _, test = load_digits_split()
    model = build_model("mlp", seed=0)
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
        evaluate(build_model("mlp", 0), empty)
