"""The run configuration: every `[tool.flwr.app.config]` key, parsed and validated once."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

from fedq.availability import parse_availability
from fedq.data import PARTITIONERS
from fedq.datasources import DataSource, parse_data_source
from fedq.errors import ConfigError
from fedq.local_optimizer import MOMENTUM_RULES, RULES, LocalOptimizer
from fedq.models import ModelSpec, parse_input_shape
from fedq.topology import Topology, parse_topology
from quant.codec import Codec
from quant.codec_spec import CodecSpecError, parse_codec_spec
from quant.training_spec import QuantSpec, QuantSpecError, parse_quant_spec

# Strategy names the ServerApp can build (server.strategy_factory maps each to a class).
STRATEGIES: tuple[str, ...] = ("fedavg", "fedau", "lodadac")
LODADAC = "lodadac"
# Default client step sizes (`lr = 0`): SGD-type steps, and LoDAdaC's adaptive rules.
SGD_LR = 0.1
ADAPTIVE_LR = 0.01
# FedAU's aggregation modes (strategies.fedau.MODES; kept here to avoid importing flwr).
FEDAU_MODES: tuple[str, ...] = ("fedau", "participants", "all", "known-prob")

# `compress = "none"`: clients send their whole fp32 model as Flower arrays (the baseline).
NO_COMPRESSION = "none"
# `downlink = "fp32"`: the server sends the global model as Flower's fp32 arrays.
FULL_PRECISION = "fp32"
# Formats the server may send the whole global model in (run-config `downlink`); any other
# `downlink` is a codec spec of the change of the global model (strategies/downlink.py).
DOWNLINKS: tuple[str, ...] = (FULL_PRECISION, "bf16", "fp16")

ConfigValue = bool | int | float | str


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration; field `foo_bar` is the run-config key `foo-bar`."""

    num_server_rounds: int = 20
    strategy: str = "fedavg"
    model: str = "mlp"
    input_shape: str = "8,8"  # one example: F, H,W or C,H,W (fedq/models.py)
    num_classes: int = 10
    server_data: str = "digits:test"  # the server's test data; "" = federated evaluation
    partitioner: str = "iid"
    dirichlet_alpha: float = 0.5
    classes_per_client: int = 2
    local_steps: int = 20
    batch_size: int = 32
    lr: float = 0.0  # 0: the default of the strategy and optimizer (see `_default_lr`)
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    min_clients: int = 1  # connected clients the first round waits for
    min_replies: int = 1  # accepted updates a round needs, or the model is left unchanged
    round_timeout: float = 600.0
    reply_poll_interval: float = 0.1  # seconds between the ServerApp's pulls (Flower's: 3)
    max_examples: int = 10_000_000  # a reply claiming more examples is refused
    # Bounds on an update's L2 norm (strategies/update_norms.py); 0 = off.
    max_update_norm: float = 0.0  # refuse an update with a larger norm
    norm_outlier_factor: float = 0.0  # refuse one above this many times the round's median
    clip_norm: float = 0.0  # scale larger updates down to this norm
    seed: int = 0
    output_dir: str = "runs"
    quant: str = "fp32"
    compress: str = NO_COMPRESSION  # uplink codec spec (quant/codec_spec.py) or "none"
    downlink: str = "fp32"
    fedau_mode: str = "fedau"
    fedau_cutoff: int = 0
    fedau_num_clients: int = 0  # FedAU's N, all clients; 0 = unknown: the clients heard from
    server_lr: float = 1.0
    availability: str = "always"
    monitor: str = ""  # host:port of a monitor's telemetry ingest; "" = no telemetry
    resume_from: str = ""  # a run directory to continue from its checkpoint; "" = a new run
    # LoDAdaC (strategy "lodadac"); `local-steps` is its K and `lr` its α.
    topology: str = "ring"
    optimizer: str = "adam"
    consensus_step: float = 0.5  # γ
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 0.0  # δ; 0 = the optimizer's default (1 for sgd/heavy-ball, 1e-3 otherwise)

    # Typed values parsed once from the strings above; they are not run-config keys.
    quant_spec: QuantSpec = field(init=False, repr=False, compare=False)
    uplink_codec: Codec | None = field(init=False, repr=False, compare=False)
    downlink_codec: Codec | None = field(init=False, repr=False, compare=False)
    # True: `downlink_codec` encodes the change of the global model, not the model.
    downlink_changes: bool = field(init=False, repr=False, compare=False)
    model_spec: ModelSpec = field(init=False, repr=False, compare=False)
    server_source: DataSource | None = field(init=False, repr=False, compare=False)
    topology_spec: Topology = field(init=False, repr=False, compare=False)
    local_optimizer: LocalOptimizer = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name, None)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{_key(item.name)}={value!r} must be a finite number")
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("optimizer", self.optimizer, RULES)
        if self.lr < 0:
            raise ConfigError(f"lr={self.lr!r} must be > 0, or 0 for the default")
        if self.lr == 0:
            object.__setattr__(self, "lr", _default_lr(self.strategy, self.optimizer))
        _check_choice("partitioner", self.partitioner, PARTITIONERS)
        _check_choice("fedau_mode", self.fedau_mode, FEDAU_MODES)
        _check_at_least("fedau_cutoff", self.fedau_cutoff, 0)
        if self.fedau_num_clients < 0:
            raise ConfigError(
                f"fedau-num-clients={self.fedau_num_clients!r} must be >= 1 (the total number "
                "of clients), or 0 when it is unknown"
            )
        for key in ("num_server_rounds", "classes_per_client", "local_steps", "batch_size"):
            _check_at_least(key, getattr(self, key), 1)
        _check_at_least("min_clients", self.min_clients, 1)
        _check_at_least("min_replies", self.min_replies, 1)
        _check_at_least("max_examples", self.max_examples, 1)
        for key in ("max_update_norm", "clip_norm"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{_key(key)}={getattr(self, key)!r} must be >= 0 (0: off)")
        if self.norm_outlier_factor != 0 and self.norm_outlier_factor <= 1:
            raise ConfigError(
                f"norm-outlier-factor={self.norm_outlier_factor!r} must be > 1 "
                "(times the round's median update norm), or 0 for off"
            )
        if self.clip_norm and self.strategy == LODADAC:
            raise ConfigError(
                "clip-norm does not apply to strategy='lodadac' (its clients keep the update "
                "they sent in their public copy); use max-update-norm or norm-outlier-factor"
            )
        if not 0 < self.reply_poll_interval <= min(self.round_timeout, 60.0):
            raise ConfigError(
                f"reply-poll-interval={self.reply_poll_interval!r} must be in (0, 60] seconds "
                f"and at most round-timeout={self.round_timeout!r}"
            )
        _check_at_least("seed", self.seed, 0)
        for key in ("dirichlet_alpha", "round_timeout", "server_lr"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{_key(key)}={getattr(self, key)!r} must be > 0")
        if not 0.0 < self.fraction_train <= 1.0:
            raise ConfigError(f"fraction-train={self.fraction_train!r} must be in (0, 1]")
        if not 0.0 <= self.fraction_evaluate <= 1.0:
            raise ConfigError(f"fraction-evaluate={self.fraction_evaluate!r} must be in [0, 1]")
        if not self.output_dir:
            raise ConfigError("output-dir='' must name a directory")
        if self.monitor and not _is_host_port(self.monitor):
            raise ConfigError(
                f"monitor={self.monitor!r} must be HOST:PORT (port 1..65535), or '' for none"
            )
        # A nominal label rate: each client computes its own from its labels.
        parse_availability(self.availability, label_p=1.0)
        self._parse_specs()
        self._parse_lodadac()
        self._parse_model_and_data()

    def _parse_specs(self) -> None:
        """Parse `quant`, `compress` and `downlink` into `quant_spec` and the two codecs."""
        try:
            quant_spec = parse_quant_spec(self.quant)
        except QuantSpecError as exc:
            raise ConfigError(str(exc)) from None
        uplink = None
        if self.compress != NO_COMPRESSION:
            try:
                uplink = Codec.from_spec(self.compress)
            except CodecSpecError as exc:
                raise ConfigError(f"{exc} (or {NO_COMPRESSION!r})") from None
        downlink = _downlink_codec(self.downlink)
        if self.strategy == LODADAC:
            uplink = _gossip_codec(uplink, downlink)
        object.__setattr__(self, "quant_spec", quant_spec)
        object.__setattr__(self, "uplink_codec", uplink)
        object.__setattr__(self, "downlink_codec", downlink)
        object.__setattr__(self, "downlink_changes", self.downlink not in DOWNLINKS)

    def _parse_model_and_data(self) -> None:
        """Parse the model spec and the server's test data (None: federated evaluation)."""
        spec = ModelSpec(self.model, parse_input_shape(self.input_shape), self.num_classes)
        source = (
            parse_data_source(self.server_data, key="server-data") if self.server_data else None
        )
        object.__setattr__(self, "model_spec", spec)
        object.__setattr__(self, "server_source", source)

    @property
    def evaluation_fraction(self) -> float:
        """Clients sampled for federated evaluation: every one when the server has no data."""
        return self.fraction_evaluate or (0.0 if self.server_source is not None else 1.0)

    def _parse_lodadac(self) -> None:
        """Parse `topology` and the local optimizer's settings into typed values."""
        _check_choice("optimizer", self.optimizer, RULES)
        if not 0.0 < self.consensus_step <= 1.0:
            raise ConfigError(f"consensus-step={self.consensus_step!r} must be in (0, 1]")
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"{key}={getattr(self, key)!r} must be in [0, 1)")
        if self.eps < 0:
            raise ConfigError(f"eps={self.eps!r} must be > 0, or 0 for the optimizer's default")
        optimizer = LocalOptimizer(
            rule=self.optimizer,
            lr=self.lr,
            beta1=self.beta1,
            beta2=self.beta2,
            eps=self.eps or None,
        )
        object.__setattr__(self, "topology_spec", parse_topology(self.topology))
        object.__setattr__(self, "local_optimizer", optimizer)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Parse kebab-case run-config keys (as Flower's `context.run_config` holds them).

        Missing keys take their defaults; unknown keys and wrongly typed values raise
        `ConfigError` naming the key, the value and what is allowed.
        """
        hints = _field_types(cls)
        by_key = {_key(f.name): f.name for f in fields(cls) if f.init}
        unknown = sorted(set(values) - set(by_key))
        if unknown:
            raise ConfigError(
                f"unknown run-config key {unknown[0]!r}; allowed: {', '.join(sorted(by_key))}"
            )
        kwargs = {by_key[k]: _coerce(k, v, hints[by_key[k]]) for k, v in values.items()}
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, ConfigValue]:
        """Return the kebab-case mapping, the inverse of `from_mapping`."""
        return {_key(f.name): getattr(self, f.name) for f in fields(self) if f.init}

    def replace(self, **changes: Any) -> RunConfig:
        """Return a copy with fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """The resolved type of each field of `cls`: resolving them costs about 2 ms, and
    every client message parses the run config."""
    return get_type_hints(cls)


def _is_host_port(text: str) -> bool:
    """`host:port` or `[v6]:port`, the port in 1..65535."""
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 1 <= int(port) <= 65535)


def _default_lr(strategy: str, optimizer: str) -> float:
    """The client step size when `lr` is 0: 0.1 for SGD-type steps, 0.01 for adaptive ones.

    LoDAdaC's adaptive rules move every weight by about lr per step (and the first step,
    with u = 0, by lr·(1-β1)·|g|/δ), so SGD's 0.1 makes them diverge on fedq's models.
    """
    adaptive = strategy == LODADAC and optimizer not in MOMENTUM_RULES
    return ADAPTIVE_LR if adaptive else SGD_LR


def _downlink_codec(text: str) -> Codec | None:
    """The codec of run-config `downlink`: None for fp32 arrays, a cast of the whole model
    for bf16 and fp16, else the codec of the change of the global model."""
    if text == FULL_PRECISION:
        return None
    if text in DOWNLINKS:
        return Codec.from_spec(text)
    try:
        return Codec(parse_codec_spec(text, key="downlink"))
    except CodecSpecError as exc:
        raise ConfigError(
            f"{exc}; downlink is {', '.join(DOWNLINKS)} (the whole model) or such a codec "
            "spec (the change of the model)"
        ) from None


def _gossip_codec(uplink: Codec | None, downlink: Codec | None) -> Codec:
    """LoDAdaC's message codec: `compress`, or fp32 values when it is "none".

    Its public copies absorb what compression loses, so `+ef` would count it twice; the
    server relays the clients' own messages, so a downlink format does not apply.
    """
    if uplink is not None and uplink.error_feedback:
        raise ConfigError(
            f"compress={uplink.spec.describe()!r}: lodadac needs no +ef (its public copies "
            "carry what compression loses); drop '+ef'"
        )
    if downlink is not None:
        raise ConfigError(
            f"downlink={downlink.spec.describe()!r} does not apply to lodadac, which relays "
            f"the clients' own messages; allowed: {FULL_PRECISION}"
        )
    return uplink or Codec.from_spec("fp32")


def _key(field_name: str) -> str:
    return field_name.replace("_", "-")


def _coerce(key: str, value: Any, expected: type) -> ConfigValue:
    # bool is a subclass of int: refuse it explicitly so `lr=true` is an error.
    if isinstance(value, bool) and expected is not bool:
        raise ConfigError(f"{key}={value!r} must be of type {expected.__name__}")
    if expected is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, expected):
        raise ConfigError(
            f"{key}={value!r} must be of type {expected.__name__}, not {type(value).__name__}"
        )
    return value


def _check_choice(field_name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{_key(field_name)}={value!r} is not known; allowed: {', '.join(allowed)}"
        )


def _check_at_least(field_name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"{_key(field_name)}={value!r} must be >= {minimum}")
