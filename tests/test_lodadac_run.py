"""LoDAdaC's server and fedq's ClientApp together, in one process, with absences and losses.

The transport is left out (bench/in_process_grid.py delivers each message to the ClientApp
with a Context per client, as a SuperNode would); everything else is the real thing.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from bench.in_process_grid import InProcessGrid
from client import lodadac as agent_side
from client.client_app import app
from fedq import wire
from fedq.data import load_digits_split
from fedq.models import build_model, evaluate
from fedq.runconfig import RunConfig
from quant.qat import quantize_model
from server.metering import MeteredGrid
from server.strategy_factory import build_strategy

CLIENTS = 6


def _setup(**config):
    run = RunConfig(
        strategy="lodadac",
        partitioner="dirichlet",
        dirichlet_alpha=0.3,
        local_steps=2,
        batch_size=16,
        lr=0.01,
        min_clients=CLIENTS,
        **config,
    )
    nodes = [{"partition-id": i, "num-partitions": CLIENTS} for i in range(CLIENTS)]
    grid = MeteredGrid(InProcessGrid(app, nodes, run.to_mapping()))
    return run, grid, build_strategy(run)


def _round(link, grid, server_round, arrays):
    config = ConfigRecord({wire.LOCAL_STEPS: 2, wire.BATCH_SIZE: 16, wire.LR: 0.01})
    messages = link.configure_train(server_round, arrays, config, grid)
    new, _ = link.aggregate_train(server_round, grid.send_and_receive(messages))
    return new if new is not None else arrays


def _agent(grid, node, run):
    model = quantize_model(build_model(run.model_spec, run.seed), run.quant_spec)
    keys, parameters = list(model.state_dict()), [k for k, _ in model.named_parameters()]
    state = grid._inner.contexts[node].state
    return agent_side.load_state(state, keys, run.local_optimizer, parameters), model


def _check_every_copy_agrees(link, grid, run, next_round):
    """x̂_i is the same bits on the client and the server; y_i follows after step 1."""
    lodadac = link.strategy
    checked = 0
    for agent, node in enumerate(lodadac.node_of):
        state, model = _agent(grid, node, run)
        if state is None or agent not in lodadac.started:
            continue
        for key, value in lodadac.public[agent].items():
            np.testing.assert_array_equal(state.x_hat[key].numpy(), value, f"agent {agent} {key}")
        config = ConfigRecord({wire.SERVER_ROUND: next_round})
        content = lodadac._instruction(agent, next_round, config)
        state = agent_side.begin_round(
            state, content, run.uplink_codec, run.consensus_step, model, run.local_optimizer
        )
        for key, value in lodadac._mix(agent).items():
            np.testing.assert_allclose(state.y[key].numpy(), value, atol=2e-6, err_msg=key)
        checked += 1
    return checked


def test_copies_agree_after_rounds_with_absences_and_accuracy_rises() -> None:
    run, grid, link = _setup(compress="topk:0.3+int8", availability="bernoulli:0.6")
    model = build_model(run.model_spec, run.seed)
    arrays = ArrayRecord(model.state_dict())
    sat_out = 0
    for server_round in range(1, 9):
        arrays = _round(link, grid, server_round, arrays)
        sat_out += len(link.round_outcome.absent)
    assert sat_out >= 5, "the availability model made clients miss rounds"
    test = load_digits_split()[1]
    before = evaluate(model, test)[1]
    model.load_state_dict(arrays.to_torch_state_dict())
    assert evaluate(model, test)[1] > before + 0.3, "the average public model learned"
    assert _check_every_copy_agrees(link, grid, run, 9) == CLIENTS
    assert link.round_outcome.figures["consensus_distance"] > 0


def test_a_client_that_lost_its_state_is_restarted_from_its_public_copy() -> None:
    run, grid, link = _setup(compress="int4")
    arrays = ArrayRecord(build_model(run.model_spec, run.seed).state_dict())
    for server_round in range(1, 4):
        arrays = _round(link, grid, server_round, arrays)
    lost = link.strategy.node_of[2]
    grid._inner.contexts[lost].state = RecordDict()  # its SuperNode restarted
    arrays = _round(link, grid, 4, arrays)
    (failure,) = grid.ledger.take()[lost].errors
    assert "AgentStateError: this client has no LoDAdaC state" in failure
    assert link.strategy.to_repair == {2}
    for server_round in range(5, 7):
        arrays = _round(link, grid, server_round, arrays)
    assert link.strategy.to_repair == set()
    assert link.round_outcome.participants == sorted(f"{n}" for n in link.strategy.node_of)
    assert _check_every_copy_agrees(link, grid, run, 7) == CLIENTS


def test_lodadac_trains_quantized_and_its_copies_still_agree() -> None:
    run, grid, link = _setup(compress="int4", quant="w=int8,a=int8")
    arrays = ArrayRecord(build_model(run.model_spec, run.seed).state_dict())
    for server_round in range(1, 3):
        arrays = _round(link, grid, server_round, arrays)
        assert len(link.round_outcome.participants) == CLIENTS
        assert link.round_outcome.rejected == []
    assert _check_every_copy_agrees(link, grid, run, 3) == CLIENTS
