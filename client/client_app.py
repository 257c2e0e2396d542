"""The fedq ClientApp: trains the received model on this client's partition and replies.

The functions here see plain Flower arrays: `compression_mod` (client/compression.py)
decodes a compressed global model before they run and encodes the update after.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.nn.functional import cross_entropy

from client import lodadac
from client.compression import compression_mod
from client.local_data import local_data
from client.trace_mod import trace_mod
from client.training import minibatches, round_seed, train_local
from fedq import wire
from fedq.availability import label_correlated_p, parse_availability, takes_part
from fedq.data import LabeledArrays
from fedq.models import build_model, evaluate
from fedq.nodeconfig import NodeSettings
from fedq.runconfig import RunConfig
from quant.qat import quantize_model

app = ClientApp(mods=[trace_mod])


@dataclass(frozen=True)
class LocalRound:
    """What both train functions know once a client has decided to take part in a round."""

    run: RunConfig
    node: NodeSettings
    data: LabeledArrays
    server_round: int
    seed: int  # of this (run, round, client): minibatch order, quantization, codec draws
    identity: ConfigRecord  # the `client` record every train reply carries


def _take_part(msg: Message, context: Context) -> LocalRound | Message:
    """This round's setting, or, if the availability model says so, the sit-out reply."""
    run = RunConfig.from_mapping(context.run_config)
    node = NodeSettings.from_node_config(context.node_config)
    data = local_data(run, node, context).train
    server_round = int(msg.content[wire.CONFIG][wire.SERVER_ROUND])
    availability = parse_availability(
        node.availability or run.availability,
        label_correlated_p(data.y, run.model_spec.num_classes, run.seed),
    )
    identity = ConfigRecord(
        {
            wire.CLIENT_ID: node.client_id or str(context.node_id),
            wire.AVAILABILITY_P: availability.p,
        }
    )
    identity[wire.PARTICIPATED] = takes_part(
        availability, server_round, run.seed, node.partition_id
    )
    if not identity[wire.PARTICIPATED]:
        return Message(content=RecordDict({wire.CLIENT: identity}), reply_to=msg)
    torch.set_num_threads(node.torch_threads)
    seed = round_seed(run.seed, server_round, node.partition_id)
    return LocalRound(run, node, data, server_round, seed, identity)


def _reply(msg: Message, local: LocalRound, train_loss: float, **records: Any) -> Message:
    """A train reply: ``records`` (the update), the metrics and the client's identity."""
    metrics = MetricRecord({wire.NUM_EXAMPLES: len(local.data), wire.TRAIN_LOSS: train_loss})
    content = RecordDict({**records, wire.METRICS: metrics, wire.CLIENT: local.identity})
    return Message(content=content, reply_to=msg)


@app.train(mods=[compression_mod])
def train(msg: Message, context: Context) -> Message:
    """Load the global model, run the round's local SGD steps, reply with the local model.

    A client whose availability model says it sits this round out replies at once,
    saying so, without training.
    """
    local = _take_part(msg, context)
    if isinstance(local, Message):
        return local
    instructions = msg.content[wire.CONFIG]
    model = build_model(local.run.model_spec, seed=local.run.seed)
    model.load_state_dict(msg.content[wire.ARRAYS].to_torch_state_dict())
    # Quantized training on fp32 master weights; the state dict sent back stays fp32.
    quantize_model(model, local.run.quant_spec, torch.Generator().manual_seed(local.seed))
    train_loss = train_local(
        model,
        local.data,
        steps=int(instructions[wire.LOCAL_STEPS]),
        batch_size=int(instructions[wire.BATCH_SIZE]),
        lr=float(instructions[wire.LR]),
        seed=local.seed,
    )
    return _reply(msg, local, train_loss, **{wire.ARRAYS: ArrayRecord(model.state_dict())})


@app.train(wire.LODADAC_ACTION)
def train_lodadac(msg: Message, context: Context) -> Message:
    """One LoDAdaC round (client/lodadac.py): mix in the neighbours, K steps, send q_i.

    A client that sits the round out changes nothing: it does not even read what its
    neighbours sent, and the server rebuilds its y_i when it is back.
    """
    local = _take_part(msg, context)
    if isinstance(local, Message):
        return local
    run, instructions = local.run, msg.content[wire.CONFIG]
    optimizer = replace(run.local_optimizer, lr=float(instructions[wire.LR]))
    model = build_model(run.model_spec, seed=run.seed)
    quantize_model(model, run.quant_spec, torch.Generator().manual_seed(local.seed))
    keys, parameters = list(model.state_dict()), [k for k, _ in model.named_parameters()]
    agent = lodadac.load_state(context.state, keys, optimizer, parameters)
    agent = lodadac.begin_round(
        agent, msg.content, run.uplink_codec, run.consensus_step, model, optimizer
    )
    x, y = torch.from_numpy(local.data.x), torch.from_numpy(local.data.y)
    batches = minibatches(
        len(local.data),
        int(instructions[wire.BATCH_SIZE]),
        int(instructions[wire.LOCAL_STEPS]),
        local.seed,
    )
    train_loss = lodadac.local_steps(
        agent, model, optimizer, batches, lambda batch: cross_entropy(model(x[batch]), y[batch])
    )
    self_weight = float(msg.content[wire.GOSSIP][wire.SELF_WEIGHT])
    payload = lodadac.end_round(agent, run.uplink_codec, self_weight, local.seed)
    lodadac.save_state(context.state, agent)
    return _reply(msg, local, train_loss, **{wire.UPDATE: ConfigRecord({wire.PAYLOAD: payload})})


@app.evaluate(mods=[compression_mod])
def evaluate_global(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this client's validation share (see local_data)."""
    run = RunConfig.from_mapping(context.run_config)
    node = NodeSettings.from_node_config(context.node_config)
    data = local_data(run, node, context).validation
    model = build_model(run.model_spec, seed=run.seed)
    model.load_state_dict(msg.content[wire.ARRAYS].to_torch_state_dict())
    quantize_model(model, run.quant_spec)
    loss, accuracy = evaluate(model, data)
    metrics = MetricRecord(
        {wire.NUM_EXAMPLES: len(data), wire.EVAL_LOSS: loss, wire.EVAL_ACCURACY: accuracy}
    )
    return Message(content=RecordDict({wire.METRICS: metrics}), reply_to=msg)
