"""The fedq ClientApp: trains the received model on this client's partition and replies.

The functions here see plain Flower arrays: `compression_mod` (client/compression.py)
decodes a compressed global model before they run and encodes the update after.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.compression import compression_mod
from client.local_data import cached_arrays
from client.training import round_seed, train_local
from fedq import wire
from fedq.availability import label_correlated_p, parse_availability, takes_part
from fedq.data import NUM_CLASSES, PartitionSpec, load_partition, load_test_share
from fedq.models import build_model, evaluate
from fedq.nodeconfig import NodeSettings
from fedq.runconfig import RunConfig
from quant.qat import quantize_model

app = ClientApp()

# Context-state keys of the cached local data.
TRAIN_KEY = "fedq.train-partition"
TEST_KEY = "fedq.test-share"


@app.train(mods=[compression_mod])
def train(msg: Message, context: Context) -> Message:
    """Load the global model, run the round's local steps, reply with the local model.

    A client whose availability model says it sits this round out replies at once,
    saying so, without training.
    """
    run = RunConfig.from_mapping(context.run_config)
    node = NodeSettings.from_node_config(context.node_config)
    spec = _partition_spec(run, node)
    data = cached_arrays(context, TRAIN_KEY, lambda: load_partition(spec, node.partition_id))
    instructions = msg.content[wire.CONFIG]
    server_round = int(instructions[wire.SERVER_ROUND])
    availability = parse_availability(
        node.availability or run.availability, label_correlated_p(data.y, NUM_CLASSES, run.seed)
    )
    identity = ConfigRecord(
        {
            wire.CLIENT_ID: node.client_id or str(context.node_id),
            wire.AVAILABILITY_P: availability.p,
        }
    )
    if not takes_part(availability, server_round, run.seed, node.partition_id):
        identity[wire.PARTICIPATED] = False
        return Message(content=RecordDict({wire.CLIENT: identity}), reply_to=msg)
    identity[wire.PARTICIPATED] = True

    torch.set_num_threads(node.torch_threads)
    seed = round_seed(run.seed, server_round, node.partition_id)
    model = build_model(run.model, seed=run.seed)
    model.load_state_dict(msg.content[wire.ARRAYS].to_torch_state_dict())
    # Quantized training on fp32 master weights; the state dict sent back stays fp32.
    quantize_model(model, run.quant_spec, torch.Generator().manual_seed(seed))
    train_loss = train_local(
        model,
        data,
        steps=int(instructions[wire.LOCAL_STEPS]),
        batch_size=int(instructions[wire.BATCH_SIZE]),
        lr=float(instructions[wire.LR]),
        seed=seed,
    )
    content = RecordDict(
        {
            wire.ARRAYS: ArrayRecord(model.state_dict()),
            wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: len(data), wire.TRAIN_LOSS: train_loss}),
            wire.CLIENT: identity,
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate(mods=[compression_mod])
def evaluate_global(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this client's share of the held-out test split."""
    run = RunConfig.from_mapping(context.run_config)
    node = NodeSettings.from_node_config(context.node_config)
    data = cached_arrays(
        context, TEST_KEY, lambda: load_test_share(node.num_partitions, node.partition_id)
    )
    model = build_model(run.model, seed=run.seed)
    model.load_state_dict(msg.content[wire.ARRAYS].to_torch_state_dict())
    quantize_model(model, run.quant_spec)
    loss, accuracy = evaluate(model, data)
    metrics = MetricRecord(
        {wire.NUM_EXAMPLES: len(data), wire.EVAL_LOSS: loss, wire.EVAL_ACCURACY: accuracy}
    )
    return Message(content=RecordDict({wire.METRICS: metrics}), reply_to=msg)


def _partition_spec(run: RunConfig, node: NodeSettings) -> PartitionSpec:
    return PartitionSpec(
        partitioner=run.partitioner,
        num_partitions=node.num_partitions,
        dirichlet_alpha=run.dirichlet_alpha,
        classes_per_client=run.classes_per_client,
        seed=run.seed,
    )
