"""RunConfig: parsing, defaults and the error messages users see."""

import tomllib
from pathlib import Path

import pytest

from fedq.errors import ConfigError
from fedq.runconfig import RunConfig

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_defaults_are_the_dataclass_defaults():
    values = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert RunConfig.from_mapping(values) == RunConfig()
    assert set(values) == set(RunConfig().to_mapping())


def test_round_trip_through_the_kebab_case_mapping():
    config = RunConfig(num_server_rounds=3, partitioner="dirichlet", lr=0.05)
    assert RunConfig.from_mapping(config.to_mapping()) == config
    assert config.to_mapping()["num-server-rounds"] == 3


def test_missing_keys_take_defaults_and_ints_widen_to_floats():
    config = RunConfig.from_mapping({"lr": 1, "num-server-rounds": 7})
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.num_server_rounds == 7
    assert config.model == RunConfig().model


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"strategy": "fedsgd"}, r"strategy='fedsgd' is not known; allowed: fedavg"),
        ({"model": "vit"}, r"model='vit' is not known; allowed: mlp, cnn, resnet"),
        ({"input-shape": "8,x"}, r"input-shape='8,x' is not a shape"),
        ({"num-classes": 1}, r"num-classes=1 must be >= 2"),
        ({"server-data": "parquet:x"}, r"server-data='parquet:x' is not a data source"),
        ({"partitioner": "zipf"}, r"allowed: iid, dirichlet, pathological"),
        ({"num-server-rounds": 0}, r"num-server-rounds=0 must be >= 1"),
        ({"local-steps": -2}, r"local-steps=-2 must be >= 1"),
        ({"lr": -0.5}, r"lr=-0.5 must be > 0, or 0 for the default"),
        ({"lr": float("nan")}, r"lr=nan must be a finite number"),
        ({"reply-poll-interval": 120.0}, r"reply-poll-interval=120.0 must be in \(0, 60\]"),
        ({"max-examples": 0}, r"max-examples=0 must be >= 1"),
        (
            {"fedau-num-clients": -3},
            r"^fedau-num-clients=-3 must be >= 1 \(the total number of clients\), or 0 when it "
            r"is unknown$",
        ),
        ({"fedau-num-clients": 2.0}, r"fedau-num-clients=2.0 must be of type int, not float"),
        ({"fraction-train": 1.5}, r"fraction-train=1.5 must be in \(0, 1\]"),
        ({"num-server-rounds": 2.5}, r"num-server-rounds=2.5 must be of type int, not float"),
        ({"lr": True}, r"lr=True must be of type float"),
        ({"model": 3}, r"model=3 must be of type str"),
        ({"epochs": 3}, r"unknown run-config key 'epochs'; allowed: availability, batch-size"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(values, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(values)


@pytest.mark.parametrize(
    ("downlink", "codec", "changes"),
    [
        ("fp32", None, False),
        ("bf16", "bf16", False),
        ("fp16", "fp16", False),
        ("int8", "int8:block=64", True),
        ("int4+ef", "int4:block=64+ef", True),
        ("topk:0.05+int8+ef", "topk:0.05+int8:block=64+ef", True),
        ("int4+ans", "int4:block=64+ans", True),
    ],
)
def test_downlink_is_a_whole_model_format_or_the_codec_of_its_change(downlink, codec, changes):
    config = RunConfig(downlink=downlink)
    described = config.downlink_codec.spec.describe() if config.downlink_codec else None
    assert (described, config.downlink_changes) == (codec, changes)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"downlink": "int9"},
            r"^downlink='int9': value format 'int9' is not known; allowed value formats: fp32, "
            r".*; downlink is fp32, bf16, fp16 \(the whole model\) or such a codec spec",
        ),
        ({"downlink": "none"}, r"^downlink='none': value format 'none' is not known"),
        ({"downlink": "topk:2+int8"}, r"^downlink='topk:2\+int8': topk fraction '2' must be"),
        (
            {"downlink": "int8+ef", "strategy": "lodadac"},
            r"^downlink='int8:block=64\+ef' does not apply to lodadac, which relays the "
            r"clients' own messages; allowed: fp32$",
        ),
    ],
)
def test_a_bad_downlink_is_one_line_naming_what_is_allowed(values, message):
    with pytest.raises(ConfigError, match=message) as caught:
        RunConfig.from_mapping(values)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("value", "expected"), [(0, None), (20, 20)])
def test_fedau_num_clients_reaches_the_strategy(value, expected):
    from server.strategy_factory import build_strategy

    config = RunConfig.from_mapping({"strategy": "fedau", "fedau-num-clients": value})
    assert build_strategy(config).strategy.num_clients == expected
