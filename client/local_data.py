"""This client's data: its training examples and its validation share, kept between rounds.

A SuperNode with node-config `data` trains on its own data (fedq/datasources.py): it is read,
checked against the run's model and split, seeded, into training examples and a held-out
`val-fraction` for federated evaluation. A SuperNode without it trains on its partition of
the embedded digits and evaluates on its share of the digits test split.

Both are built on the first message and kept in the SuperNode's Context state, which
outlives the ClientApp process: later rounds read arrays instead of reading files again.
A source that does not fit the model raises `DataError` with the reason, which Flower
returns to the server as this client's error reply.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Context

from fedq.data import LabeledArrays, PartitionSpec, load_partition, load_test_share
from fedq.datasources import checked, load_source, split_validation
from fedq.nodeconfig import NodeSettings
from fedq.runconfig import RunConfig

# Context-state keys of the cached arrays.
TRAIN_KEY = "fedq.train-data"
VAL_KEY = "fedq.validation-data"


@dataclass(frozen=True)
class LocalData:
    """What this client trains on and what it evaluates on."""

    train: LabeledArrays
    validation: LabeledArrays


def local_data(run: RunConfig, node: NodeSettings, context: Context) -> LocalData:
    """This client's data, from its Context state or built (and kept there) the first time."""
    records = context.state.array_records
    if TRAIN_KEY in records and VAL_KEY in records:
        return LocalData(_arrays(records[TRAIN_KEY]), _arrays(records[VAL_KEY]))
    data = _build(run, node)
    context.state[TRAIN_KEY] = _record(data.train)
    context.state[VAL_KEY] = _record(data.validation)
    return data


def _build(run: RunConfig, node: NodeSettings) -> LocalData:
    if node.data is None:
        spec = PartitionSpec(
            partitioner=run.partitioner,
            num_partitions=node.num_partitions,
            dirichlet_alpha=run.dirichlet_alpha,
            classes_per_client=run.classes_per_client,
            seed=run.seed,
        )
        train = load_partition(spec, node.partition_id)
        validation = load_test_share(node.num_partitions, node.partition_id)
        return LocalData(
            checked(train.x, train.y, run.model_spec),
            checked(validation.x, validation.y, run.model_spec),
        )
    own = load_source(node.data, run.model_spec)
    seed = int(np.random.SeedSequence([run.seed, node.partition_id]).generate_state(1)[0])
    train, validation = split_validation(own, node.val_fraction, seed)
    return LocalData(train, validation)


def _record(data: LabeledArrays) -> ArrayRecord:
    return ArrayRecord({"x": Array(data.x), "y": Array(data.y)})


def _arrays(record: ArrayRecord) -> LabeledArrays:
    return LabeledArrays(record["x"].numpy(), record["y"].numpy())
