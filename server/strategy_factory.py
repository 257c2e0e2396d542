"""Run config -> a configured Flower strategy."""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedAvg, Strategy

from fedq import wire
from fedq.runconfig import NO_COMPRESSION, STRATEGIES, RunConfig
from strategies.codec_fedavg import FULL_PRECISION_DOWNLINK, CodecFedAvg
from strategies.fedau import FedAU


def build_strategy(config: RunConfig) -> Strategy:
    """Build the strategy named by `config.strategy` (one of `STRATEGIES`)."""
    sampling: dict[str, Any] = {
        "fraction_train": config.fraction_train,
        "fraction_evaluate": config.fraction_evaluate,
        "min_train_nodes": config.min_clients,
        "min_evaluate_nodes": config.min_clients if config.fraction_evaluate > 0 else 0,
        "min_available_nodes": config.min_clients,
        "weighted_by_key": wire.NUM_EXAMPLES,
        "arrayrecord_key": wire.ARRAYS,
        "configrecord_key": wire.CONFIG,
    }
    codecs = {"compress": config.compress, "downlink": config.downlink}
    if config.strategy == "fedavg":
        if config.compress == NO_COMPRESSION and config.downlink == FULL_PRECISION_DOWNLINK:
            # Flower's stock FedAvg, unmodified: the baseline fedq compares itself to.
            return FedAvg(**sampling)
        return CodecFedAvg(**codecs, **sampling)
    if config.strategy == "fedau":
        return FedAU(
            mode=config.fedau_mode,
            server_lr=config.server_lr,
            cutoff=config.fedau_cutoff or None,
            **codecs,
            **sampling,
        )
    raise ValueError(f"strategy={config.strategy!r} is not known; allowed: {', '.join(STRATEGIES)}")
