"""Keys of the records that travel between ServerApp and ClientApp, defined once."""

from __future__ import annotations

from typing import TypeVar

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

R = TypeVar("R", ArrayRecord, ConfigRecord, MetricRecord)

# RecordDict entries (Flower's FedAvg uses the same names by default).
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"


# ConfigRecord keys of a round's instructions to the clients.
SERVER_ROUND = "server-round"  # injected by Flower's strategies
LOCAL_STEPS = "local-steps"
BATCH_SIZE = "batch-size"
LR = "lr"

# MetricRecord keys of the clients' replies.
NUM_EXAMPLES = "num-examples"  # the weight Flower's FedAvg averages by
TRAIN_LOSS = "train-loss"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"

# ConfigRecord a client attaches to every train reply: who it is, whether it took part.
CLIENT = "client"
CLIENT_ID = "client-id"  # stable across reconnects: node-config client-id, else the node id
PARTICIPATED = "participated"  # False: the client sat this round out (availability model)
AVAILABILITY_P = "availability-p"  # the client's long-run rate; read only by `known-prob`

# Compressed transfers (run-config `compress` and `downlink`, which both ends read from the
# run config; the bytes are proto/update.proto's CompressedUpdate).
UPDATE = "update"  # ConfigRecord of a train reply holding the compressed update Δ
MODEL = "model"  # ConfigRecord of an instruction holding the compressed global model
PAYLOAD = "payload"  # the bytes inside UPDATE / MODEL
KEYS = "keys"  # MODEL: the model's array keys, in the order of the encoded arrays
# A downlink that sends changes (run-config `downlink` a codec spec other than fp32, bf16,
# fp16; strategies/downlink.py): the reference models the clients hold are numbered by the
# server round whose broadcast made them.
DELTA_OF = "delta-of"  # MODEL: the payload is the change from this reference; absent: whole
BY_CODEC = "by-codec"  # MODEL, whole: True = encoded by the run's downlink codec, not fp32
MODEL_VERSION = "model-version"  # MODEL: keep the result as this reference (absent: one-off);
# CLIENT record of a train reply: the reference the client holds after the message

# LoDAdaC (strategy "lodadac"): train messages of type "train.lodadac". The server relays
# each client's compressed message q_j (its `update` payload) to the client's neighbours.
LODADAC_ACTION = "lodadac"  # message type "train.lodadac"
GOSSIP = "gossip"  # ConfigRecord of a LoDAdaC instruction
SELF_WEIGHT = "self-weight"  # GOSSIP: W_ii, the client's weight on its own public copy
NEIGHBOR_WEIGHTS = "neighbor-weights"  # GOSSIP: W_ji of each relayed payload, same order
NEIGHBOR_PAYLOADS = "neighbor-payloads"  # GOSSIP: the q_j of last round, as the neighbours sent
PUBLIC_COPY = "public-copy"  # ArrayRecord: x̂_i as the server holds it (start or repair)
NEIGHBOR_MIX = "neighbor-mix"  # ArrayRecord: y_i = Σ_j W_ji x̂_j (resynchronisation)


def category(message_type: str) -> str:
    """The category of a Flower message type ("train", "evaluate", "query"): no action."""
    return message_type.split(".")[0]


def record(content: RecordDict, name: str, kind: type[R]) -> R | None:
    """The record ``name`` of ``content`` when it is a ``kind`` record, else None.

    Same answer as ``content.config_records.get(name)`` (for ``kind=ConfigRecord``), at a
    fraction of the cost: Flower builds those typed views anew, record by record, on every
    access, which the server would otherwise pay several times per reply.
    """
    found = content.get(name)
    return found if isinstance(found, kind) else None
