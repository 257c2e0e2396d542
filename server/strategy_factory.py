"""Run config -> the strategy the ServerApp runs: an algorithm inside the checking link."""

from __future__ import annotations

import logging
from typing import Any

from flwr.serverapp.strategy import FedAvg, Strategy

from fedq import wire
from fedq.local_optimizer import MOMENTUM_RULES
from fedq.runconfig import LODADAC, STRATEGIES, RunConfig
from strategies.fedau import FedAU
from strategies.link import Link
from strategies.lodadac import LoDAdaC
from strategies.update_norms import NormBounds

log = logging.getLogger(__name__)
# Above this step size the adaptive rules (Adam and kin) usually diverge on fedq's models.
ADAPTIVE_LR_LIMIT = 0.05


def build_strategy(config: RunConfig) -> Link:
    """The strategy named by `config.strategy`, wrapped in a `Link` with the run's codecs.

    `fedavg` is Flower's stock FedAvg, unmodified: the baseline fedq compares itself to.
    The link in front of it checks every reply (and, with codecs, decodes them) before
    FedAvg's own aggregation sees it.
    """
    return Link(
        _algorithm(config),
        uplink=config.uplink_codec,
        downlink=config.downlink_codec,
        downlink_changes=config.downlink_changes,
        max_examples=config.max_examples,
        min_clients=config.min_clients,
        min_replies=config.min_replies,
        norm_bounds=NormBounds(
            max_norm=config.max_update_norm,
            outlier_factor=config.norm_outlier_factor,
            clip=config.clip_norm,
        ),
    )


def _warn_outside_lodadac_theory(config: RunConfig) -> None:
    """Say so when a LoDAdaC run leaves what its convergence theory and defaults cover."""
    codec = config.uplink_codec
    if codec is not None and codec.spec.stochastic:
        log.warning(
            "compress=%r rounds stochastically: unbiased, not contractive, so LoDAdaC's "
            "convergence theory does not cover it (drop ':sr' for a contractive codec)",
            config.compress,
        )
    optimizer = config.local_optimizer
    if optimizer.rule not in MOMENTUM_RULES and optimizer.lr > ADAPTIVE_LR_LIMIT:
        log.warning(
            "lr=%g with optimizer=%s: an adaptive step moves each weight by about lr, and the "
            "first one (u = 0) by lr·(1-β1)·|g|/δ; values above %g usually diverge",
            optimizer.lr,
            optimizer.rule,
            ADAPTIVE_LR_LIMIT,
        )


def _algorithm(config: RunConfig) -> Strategy:
    sampling: dict[str, Any] = {
        "fraction_train": config.fraction_train,
        "fraction_evaluate": config.evaluation_fraction,
        # `min-clients` gates the first round only (the Link waits for them); later rounds
        # sample the nodes that are connected, so a dead client does not stall the run.
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1 if config.evaluation_fraction > 0 else 0,
        "min_available_nodes": 1,
        "weighted_by_key": wire.NUM_EXAMPLES,
        "arrayrecord_key": wire.ARRAYS,
        "configrecord_key": wire.CONFIG,
    }
    if config.strategy == "fedavg":
        return FedAvg(**sampling)
    if config.strategy == "fedau":
        return FedAU(
            mode=config.fedau_mode,
            server_lr=config.server_lr,
            cutoff=config.fedau_cutoff or None,
            num_clients=config.fedau_num_clients or None,
            **sampling,
        )
    if config.strategy == LODADAC:
        _warn_outside_lodadac_theory(config)
        return LoDAdaC(topology=config.topology_spec, seed=config.seed, **sampling)
    raise ValueError(f"strategy={config.strategy!r} is not known; allowed: {', '.join(STRATEGIES)}")
