"""Keys of the records that travel between ServerApp and ClientApp, defined once."""

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
