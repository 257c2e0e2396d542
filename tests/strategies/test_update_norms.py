"""Bounds on update norms (strategies/update_norms.py) in front of any strategy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg

from fedq.errors import ConfigError
from fedq.runconfig import RunConfig
from quant import Codec
from server.strategy_factory import build_strategy
from strategies.fedau import FedAU
from strategies.link import Link
from strategies.replies import Rejection
from strategies.update_norms import CLIPPED_FIGURE, NormBounds
from tests.flower_messages import NodesGrid
from tests.strategies.test_link import (
    GLOBAL,
    SAMPLING,
    _compressed_reply,
    _global,
    _model_reply,
)


def _link(strategy, bounds: NormBounds, uplink: str | None = None) -> Link:
    link = Link(strategy, uplink=Codec.from_spec(uplink) if uplink else None, norm_bounds=bounds)
    list(link.configure_train(1, _global(), ConfigRecord(), NodesGrid(list(range(10, 20)))))
    return link


def _shifted(shift: float) -> dict[str, np.ndarray]:
    """The global model moved by ``shift`` in every weight: ‖Δ‖ = |shift|·√324 = 18|shift|."""
    return {k: GLOBAL[k] + np.float32(shift) for k in GLOBAL}


NUMEL = sum(v.size for v in GLOBAL.values())  # 324


def test_an_update_above_max_update_norm_is_refused_with_its_norm() -> None:
    link = _link(FedAvg(**SAMPLING), NormBounds(max_norm=10.0))
    arrays, _ = link.aggregate_train(
        1, [_model_reply(10, "small", _shifted(0.5)), _model_reply(11, "big", _shifted(1.0))]
    )
    (rejection,) = link.round_outcome.rejected
    assert rejection.client == "big" and rejection.node == 11
    assert rejection.reason == "update norm 18 exceeds max-update-norm=10"
    for key in GLOBAL:
        np.testing.assert_array_equal(arrays[key].numpy(), _shifted(0.5)[key])


def test_an_outlier_far_beyond_the_rounds_median_is_refused() -> None:
    link = _link(FedAvg(**SAMPLING), NormBounds(outlier_factor=5.0))
    shifts = {"a": 0.1, "b": 0.12, "c": 0.09, "scaled": 3.0}
    replies = [
        _model_reply(10 + i, client, _shifted(s)) for i, (client, s) in enumerate(shifts.items())
    ]
    link.aggregate_train(1, replies)
    (rejection,) = link.round_outcome.rejected
    assert rejection.client == "scaled"
    assert "is more than norm-outlier-factor=5 times the round's median" in rejection.reason
    assert sorted(link.round_outcome.participants) == ["a", "b", "c"]


def test_with_two_updates_there_is_no_median_to_judge_by() -> None:
    link = _link(FedAvg(**SAMPLING), NormBounds(outlier_factor=2.0))
    link.aggregate_train(
        1, [_model_reply(10, "a", _shifted(0.1)), _model_reply(11, "b", _shifted(5.0))]
    )
    assert link.round_outcome.rejected == []


@pytest.mark.parametrize("uplink", [None, "fp32", "int8"])
def test_clipping_scales_the_update_down_and_flowers_fedavg_averages_the_clipped_ones(
    uplink: str | None,
) -> None:
    link = _link(FedAvg(**SAMPLING), NormBounds(clip=9.0), uplink)
    deltas = {"small": 0.25, "big": 2.0}  # norms 4.5 (kept) and 36 (clipped to 9)
    if uplink is None:
        replies = [_model_reply(10 + i, c, _shifted(s)) for i, (c, s) in enumerate(deltas.items())]
    else:
        codec = Codec.from_spec(uplink)
        replies = [
            _compressed_reply(
                10 + i, c, codec.encode([np.full(v.shape, s, np.float32) for v in GLOBAL.values()])
            )
            for i, (c, s) in enumerate(deltas.items())
        ]
    arrays, _ = link.aggregate_train(1, replies)
    assert link.round_outcome.rejected == []
    (big_norm,) = [
        f[CLIPPED_FIGURE] for c, f in link.round_outcome.client_figures.items() if c == "big"
    ]
    assert big_norm == pytest.approx(2.0 * math.sqrt(NUMEL), rel=1e-2)
    # Equal weights: the average of Δ=0.25 and Δ=2.0·(9/36) = 0.5 is 0.375 per weight.
    for key in GLOBAL:
        np.testing.assert_allclose(arrays[key].numpy(), GLOBAL[key] + 0.375, atol=0.02)


def test_fedau_sees_refused_updates_as_absences() -> None:
    link = _link(FedAU(**SAMPLING), NormBounds(max_norm=10.0))
    link.aggregate_train(
        1, [_model_reply(10, "ok", _shifted(0.2)), _model_reply(11, "huge", _shifted(10.0))]
    )
    assert link.round_outcome.rejected[0] == Rejection(
        "huge", 11, "update norm 180 exceeds max-update-norm=10"
    )
    assert link.round_outcome.participants == ["ok"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max-update-norm": -1.0}, "max-update-norm=-1.0 must be >= 0 (0: off)"),
        ({"clip-norm": -0.5}, "clip-norm=-0.5 must be >= 0 (0: off)"),
        ({"norm-outlier-factor": 0.5}, "norm-outlier-factor=0.5 must be > 1"),
        (
            {"strategy": "lodadac", "compress": "int8", "clip-norm": 1.0},
            "clip-norm does not apply to strategy='lodadac'",
        ),
    ],
)
def test_bad_bounds_are_one_line_errors(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunConfig.from_mapping(values)


def test_the_run_config_reaches_the_link() -> None:
    config = RunConfig.from_mapping(
        {"max-update-norm": 50.0, "norm-outlier-factor": 10.0, "clip-norm": 5.0}
    )
    assert build_strategy(config).norm_bounds == NormBounds(50.0, 10.0, 5.0)
