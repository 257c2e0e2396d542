"""The monitor's settings: one pydantic-settings class, read from FEDQ_MONITOR_* variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedq.errors import ConfigError
from monitor.store import DEFAULT_STALE_AFTER_SECONDS

ENV_PREFIX = "FEDQ_MONITOR_"


class MonitorSettings(BaseSettings):
    """Where the monitor keeps its history, where it listens, and the tokens it accepts.

    Every field can be set by an environment variable named `FEDQ_MONITOR_<FIELD>` (for
    example `FEDQ_MONITOR_INGEST_TOKEN`) or passed as a keyword argument.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    database: Path = Field(Path("fedq-monitor.sqlite"), description="SQLite database file")
    host: str = Field("127.0.0.1", min_length=1, description="HTTP (REST, dashboard) host")
    port: int = Field(8050, ge=1, le=65535, description="HTTP port")
    grpc_host: str = Field("127.0.0.1", min_length=1, description="telemetry ingest host")
    grpc_port: int = Field(8051, ge=1, le=65535, description="telemetry ingest port")
    ingest_token: SecretStr = Field(SecretStr(""), description="shared secret of the senders")
    read_token: SecretStr | None = Field(None, description="bearer token the REST API asks for")
    dev: bool = Field(False, description="development mode: allows an empty ingest token")
    stale_after: float = Field(
        DEFAULT_STALE_AFTER_SECONDS,
        gt=0,
        description="seconds without a report after which a running run that sends no "
        "heartbeats is shown stale (one that does: after 4 of its heartbeat intervals)",
    )

    @model_validator(mode="after")
    def _refuse_open_ingest(self) -> MonitorSettings:
        # An open ingest port lets anyone write history; only a developer's machine may run so.
        if not self.ingest_token.get_secret_value() and not self.dev:
            raise ValueError(
                f"ingest_token is empty; set {ENV_PREFIX}INGEST_TOKEN, or run with --dev "
                "to accept telemetry without a token"
            )
        if self.read_token is not None and not self.read_token.get_secret_value():
            raise ValueError(
                f"read_token is empty; unset {ENV_PREFIX}READ_TOKEN or give it a value"
            )
        return self

    @property
    def ingest_open(self) -> bool:
        """True when telemetry is accepted without a token (dev mode, no token set)."""
        return not self.ingest_token.get_secret_value()


def load_settings(**overrides: Any) -> MonitorSettings:
    """Read the settings from the environment, `overrides` taking precedence.

    Raises ConfigError with one line naming the field, the bad value and what is allowed.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return MonitorSettings(**given)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if not field:
        return message
    value = error.get("input")
    shown = "<secret>" if "token" in field else repr(value)
    return f"{field}={shown}: {message}"
