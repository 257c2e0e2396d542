"""MonitorSettings: FEDQ_MONITOR_* variables, and no open ingest outside dev mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedq.errors import ConfigError
from monitor.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INGEST_TOKEN", "READ_TOKEN", "DEV", "PORT", "DATABASE", "GRPC_PORT"):
        monkeypatch.delenv(f"FEDQ_MONITOR_{name}", raising=False)


def test_empty_ingest_token_is_refused_outside_dev() -> None:
    with pytest.raises(ConfigError, match=r"ingest_token is empty.*FEDQ_MONITOR_INGEST_TOKEN"):
        load_settings()


def test_dev_mode_accepts_an_empty_token() -> None:
    settings = load_settings(dev=True)
    assert settings.dev and settings.ingest_open


def test_environment_variables_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDQ_MONITOR_INGEST_TOKEN", "s3cret")
    monkeypatch.setenv("FEDQ_MONITOR_PORT", "9100")
    monkeypatch.setenv("FEDQ_MONITOR_DATABASE", "/tmp/x.sqlite")
    settings = load_settings(grpc_port=9101, host=None)
    assert settings.ingest_token.get_secret_value() == "s3cret"
    assert (settings.port, settings.grpc_port, settings.host) == (9100, 9101, "127.0.0.1")
    assert settings.database == Path("/tmp/x.sqlite")
    assert not settings.ingest_open
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"port": 0}, "port=0: Input should be greater than or equal to 1"),
        ({"grpc_port": 70000}, "grpc_port=70000"),
        ({"read_token": ""}, "read_token is empty"),
    ],
)
def test_bad_values_give_one_line(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(ingest_token="t", **overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
