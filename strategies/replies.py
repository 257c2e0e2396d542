"""Reading a round's train replies: who took part, their checked updates Δ, who was refused.

A participant's reply carries its update in one of two forms:

* ``arrays`` (an ArrayRecord): the client's whole local model x_n, as Flower's FedAvg
  expects; Δ = x_n - x_t, with x_t the model the server sent it.
* ``update`` (a ConfigRecord with ``payload`` bytes): Δ itself, encoded by the run's uplink
  codec, arrays in the order of the model's keys.

Either way the update is checked before any strategy sees it — keys, shapes, dtypes,
finite values, the metrics and a plausible example count — and a reply that fails is
refused with the reason while the others go on. A reply whose client sat the round out
(``participated = False``) is an absence, and a Flower error reply (timeout, crashed
ClientApp) a failure.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SType

from fedq import wire
from quant.block_payload import BlockLayout
from quant.codec import Codec
from quant.errors import PayloadError
from quant.received_tensor import ReceivedTensor

# The metrics a fedq client sends with an update; Flower's FedAvg averages them.
REPLY_METRICS = frozenset({wire.NUM_EXAMPLES, wire.TRAIN_LOSS})
# Default bound on a reply's example count (run-config `max-examples`): a client claiming
# more would outweigh every other one in an example-weighted average.
MAX_EXAMPLES = 10_000_000


class UpdateRejected(ValueError):
    """A participant's reply cannot be used; the message is the reason."""


@dataclass(frozen=True)
class ClientUpdate:
    """One participant's checked update of a round."""

    client: str  # stable client id (node-config client-id, else the node id)
    node: int  # the Flower node id the reply came from
    # Δ as float32 arrays, keyed and shaped like the model, computed each time an array
    # is read: from the reply's whole model (ModelDelta) or its payload (EncodedDelta)
    delta: Mapping[str, np.ndarray]
    num_examples: int  # training examples the client reported
    train_loss: float  # its mean training loss this round (nats)
    availability_p: float | None  # the rate its availability model was given, if any
    payload: bytes | None = None  # the encoded update as received (None: whole model)
    clipped: bool = False  # Δ was scaled down to the run's clip-norm (strategies/update_norms)


@dataclass(frozen=True)
class Rejection:
    """A reply that arrived but was refused, and why (one line)."""

    client: str  # the client's id; "node-N" when the reply could not say who sent it
    node: int
    reason: str
    identified: bool = True  # False: ``client`` is a stand-in, no client the run knows


@dataclass
class RoundReplies:
    """Everything one round's train replies said, sorted out."""

    updates: list[ClientUpdate] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)  # clients that sat the round out
    rejected: list[Rejection] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)  # (node, Flower error reason)
    nodes: dict[str, int] = field(default_factory=dict)  # client -> node it replied from

    @property
    def participants(self) -> list[str]:
        """Clients whose update was accepted, sorted by client id."""
        return [update.client for update in self.updates]


class ReplyReader:
    """Sorts replies into updates, absences, rejections and failures.

    ``uplink`` is the run's codec (None: participants reply with whole models as arrays).
    The reader remembers which client each node is, so a client keeps its id across
    reconnects (a SuperNode that restarts gets a new node id, not a new client id).
    """

    def __init__(self, uplink: Codec | None = None, max_examples: int = MAX_EXAMPLES) -> None:
        self.uplink = uplink
        self.max_examples = max_examples
        self.client_of_node: dict[int, str] = {}
        # client -> the reference model version its latest train reply said it holds
        # (a downlink that sends changes, strategies/downlink.py); absent: none reported.
        self.model_version: dict[str, int] = {}

    def read(
        self, replies: Iterable[Message], reference: Mapping[int, Mapping[str, np.ndarray]]
    ) -> RoundReplies:
        """Sort ``replies``; ``reference[node]`` is the model x_t sent to that node.

        For whole-model replies Δ = x_n - reference; for encoded ones the reference gives
        the keys, shapes and dtypes the decoded Δ must have. A reply from a node that was
        sent nothing, a second reply from a node or from a client id, and a reply without a
        readable identity are refused before anything is learnt from them.
        """
        result, seen_nodes, seen_clients = RoundReplies(), set(), set()
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                result.failed.append((node, reply.error.reason))
                continue
            try:
                client, participated, p = self._identify(reply, reference, seen_nodes)
            except UpdateRejected as exc:
                result.rejected.append(Rejection(f"node-{node}", node, str(exc), False))
                continue
            if client in seen_clients:
                result.rejected.append(
                    Rejection(client, node, f"a second reply from client {client!r} this round")
                )
                continue
            seen_nodes.add(node)
            seen_clients.add(client)
            self.client_of_node[node] = client
            self._note_model_version(client, reply)
            result.nodes[client] = node
            if not participated:
                result.absent.append(client)
                continue
            try:
                result.updates.append(self._update(reply, client, p, reference[node]))
            except UpdateRejected as exc:
                result.rejected.append(Rejection(client, node, str(exc)))
        # Aggregation sums in this order: by client id, whatever order replies arrived in,
        # so a run (or a resumed one) computes the same model bit for bit.
        result.updates.sort(key=lambda update: update.client)
        return result

    def _identify(
        self,
        reply: Message,
        reference: Mapping[int, object],
        seen_nodes: set[int],
    ) -> tuple[str, bool, float | None]:
        """(client id, took part this round, availability rate p) of a reply, or refused."""
        node = reply.metadata.src_node_id
        if node not in reference:
            raise UpdateRejected("a reply from a node the server sent nothing to this round")
        if node in seen_nodes:
            raise UpdateRejected("a second reply from this node this round")
        record = wire.record(reply.content, wire.CLIENT, ConfigRecord) or ConfigRecord()
        client = record.get(wire.CLIENT_ID, str(node))
        if not isinstance(client, str) or not client:
            raise UpdateRejected(f"{wire.CLIENT_ID}={client!r} must be a non-empty string")
        p = record.get(wire.AVAILABILITY_P)
        # A rate is only used as an oracle weight 1/p: keep it when it is a probability.
        rate = float(p) if _is_number(p) and math.isfinite(p) and 0 < p <= 1 else None
        return client, bool(record.get(wire.PARTICIPATED, True)), rate

    def _note_model_version(self, client: str, reply: Message) -> None:
        """Keep the reference version the client says it holds (an int), else forget it."""
        record = wire.record(reply.content, wire.CLIENT, ConfigRecord) or ConfigRecord()
        version = record.get(wire.MODEL_VERSION)
        if isinstance(version, int) and not isinstance(version, bool):
            self.model_version[client] = version
        else:
            self.model_version.pop(client, None)

    def _update(
        self,
        reply: Message,
        client: str,
        p: float | None,
        reference: Mapping[str, np.ndarray],
    ) -> ClientUpdate:
        examples, loss = _checked_metrics(reply.content, self.max_examples)
        payload = None
        if self.uplink is None:
            delta = _model_delta(wire.record(reply.content, wire.ARRAYS, ArrayRecord), reference)
        else:
            payload = _payload(reply.content)
            delta = _decoded_delta(payload, self.uplink, reference)
        return ClientUpdate(client, reply.metadata.src_node_id, delta, examples, loss, p, payload)


def arrays_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord as numpy arrays, in its key order."""
    return {key: value.numpy() for key, value in record.items()}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _checked_metrics(content: RecordDict, max_examples: int) -> tuple[int, float]:
    """(num-examples, train-loss) of a participant's reply, or UpdateRejected."""
    metrics = wire.record(content, wire.METRICS, MetricRecord)
    if metrics is None or set(metrics.keys()) != REPLY_METRICS:
        keys = sorted(metrics.keys()) if metrics is not None else None
        raise UpdateRejected(
            f"metrics {keys} must be exactly {sorted(REPLY_METRICS)} in {wire.METRICS!r}"
        )
    examples, loss = metrics[wire.NUM_EXAMPLES], metrics[wire.TRAIN_LOSS]
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise UpdateRejected(f"{wire.NUM_EXAMPLES}={examples!r} must be an integer >= 1")
    if examples > max_examples:
        raise UpdateRejected(f"{wire.NUM_EXAMPLES}={examples} exceeds max-examples={max_examples}")
    if not _is_number(loss) or not math.isfinite(loss):
        raise UpdateRejected(f"{wire.TRAIN_LOSS}={loss!r} must be a finite number")
    return examples, float(loss)


def _payload(content: RecordDict) -> bytes:
    record = wire.record(content, wire.UPDATE, ConfigRecord)
    if record is None or wire.PAYLOAD not in record:
        raise UpdateRejected(f"no {wire.UPDATE!r} record with a {wire.PAYLOAD!r} in the reply")
    payload = record[wire.PAYLOAD]
    if not isinstance(payload, bytes):
        raise UpdateRejected(f"{wire.PAYLOAD!r} is {type(payload).__name__}, expected bytes")
    return payload


def _decoded_delta(
    payload: bytes, uplink: Codec, reference: Mapping[str, np.ndarray]
) -> EncodedDelta:
    """Δ of ``payload``, checked; one array per reference key, same shapes."""
    try:
        tensors = uplink.read(payload)
    except PayloadError as exc:
        raise UpdateRejected(f"payload rejected: {exc}") from None
    if len(tensors) != len(reference):
        raise UpdateRejected(f"payload has {len(tensors)} arrays, the model has {len(reference)}")
    for (key, x), tensor in zip(reference.items(), tensors, strict=True):
        if tensor.shape != x.shape:
            raise UpdateRejected(f"{key}: shape {tensor.shape} != global shape {x.shape}")
    return EncodedDelta(dict(zip(reference, tensors, strict=True)))


class EncodedDelta(Mapping[str, np.ndarray]):
    """Δ of an encoded update, checked as received; each array decoded (float32) when read.

    An aggregator adds it into its sum span by span (`add_span`), straight from the
    codes: a round's encoded updates then take no memory beyond their payloads, and no
    float32 copy of each is written and read back (:mod:`quant.received_tensor`).
    """

    def __init__(self, tensors: Mapping[str, ReceivedTensor]) -> None:
        self._tensors = tensors

    def __getitem__(self, key: str) -> np.ndarray:
        return np.asarray(self._tensors[key].numpy(), dtype=np.float32)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def layout(self, key: str) -> BlockLayout | None:
        """The layout whose spans `add_span` needs for ``key`` (None: any span)."""
        return self._tensors[key].layout

    def add_span(
        self,
        key: str,
        flat: torch.Tensor,
        weight: float,
        span: tuple[int, int],
        scratch: torch.Tensor,
    ) -> None:
        """``flat[start:end] += weight * self[key].ravel()[start:end]``, from the codes."""
        self._tensors[key].add_span(flat, weight, *span, scratch)


def _model_delta(arrays: ArrayRecord | None, reference: Mapping[str, np.ndarray]) -> ModelDelta:
    """Δ = x_local - x_t, after checking keys, shapes, dtypes and finiteness."""
    if arrays is None:
        raise UpdateRejected(f"no {wire.ARRAYS!r} record in the reply")
    if set(arrays.keys()) != set(reference):
        missing, extra = set(reference) - set(arrays.keys()), set(arrays.keys()) - set(reference)
        raise UpdateRejected(
            f"array keys differ (missing {sorted(missing)}, extra {sorted(extra)})"
        )
    local_model = {}
    for key, x in reference.items():
        try:
            local = array_view(arrays[key])
        except (TypeError, ValueError) as exc:
            raise UpdateRejected(f"{key}: unreadable array ({exc})") from None
        if local.shape != x.shape:
            raise UpdateRejected(f"{key}: shape {local.shape} != global shape {x.shape}")
        if local.dtype != x.dtype:
            raise UpdateRejected(f"{key}: dtype {local.dtype} != global dtype {x.dtype}")
        if not _all_finite(local):
            raise UpdateRejected(f"{key}: holds NaN or Inf")
        local_model[key] = local
    return ModelDelta(local_model, reference)


class ModelDelta(Mapping[str, np.ndarray]):
    """Δ = x_n − x_t of a whole-model reply, each array computed (float32) when it is read.

    Nothing is stored beside the reply's own bytes (read in place) and the shared x_t, so a
    round's updates take no memory of their own: an aggregator summing them holds one
    array of Δ at a time, and Flower's FedAvg behind the Link never needs them at all.
    """

    def __init__(self, local: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]):
        self._local = local
        self._reference = reference

    def __getitem__(self, key: str) -> np.ndarray:
        return np.subtract(self._local[key], self._reference[key], dtype=np.float32)

    def __iter__(self) -> Iterator[str]:
        return iter(self._reference)

    def __len__(self) -> int:
        return len(self._reference)

    def layout(self, key: str) -> BlockLayout | None:
        """Any span will do (`add_span`)."""
        return None

    def add_span(
        self,
        key: str,
        flat: torch.Tensor,
        weight: float,
        span: tuple[int, int],
        scratch: torch.Tensor,
    ) -> None:
        """``flat[start:end] += weight * self[key].ravel()[start:end]`` (float32, value for
        value as torch's ``add_``), that part of Δ computed into ``scratch`` instead of an
        array of the model's size."""
        local, reference = self._local[key], self._reference[key]
        if not (local.flags.c_contiguous and reference.flags.c_contiguous):  # rare: copy
            local, reference = np.ascontiguousarray(local), np.ascontiguousarray(reference)
            self._local = {**self._local, key: local}
            self._reference = {**self._reference, key: reference}
        start, end = span
        piece = scratch[: end - start].numpy()
        np.subtract(local.reshape(-1)[start:end], reference.reshape(-1)[start:end], out=piece)
        flat[start:end].add_(scratch[: end - start], alpha=weight)


_NPY_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def array_view(array: Array) -> np.ndarray:
    """A read-only numpy view of a Flower ``Array``'s values, without copying them.

    ``Array.numpy()`` reads the serialized ``.npy`` bytes into a new array; the reply's
    bytes stay alive with the reply, so the server can read them in place. Object arrays
    are refused as ``numpy.load(allow_pickle=False)`` refuses them.

    Raises:
        TypeError: not a numpy-serialized array.
        ValueError: a header or length that is not a valid ``.npy`` array.
    """
    if array.stype != SType.NUMPY:
        raise TypeError(f"serialization type {array.stype!r}, expected {SType.NUMPY!r}")
    data = array.data
    end = _header_end(data)
    if end > _MAX_NPY_HEADER:  # numpy refuses it too; not worth a cache entry
        raise ValueError(f"a .npy header of {end} bytes (numpy reads at most 10,000)")
    header = _npy_header(bytes(data[:end]))
    if header is None:  # a rarer .npy version: numpy's own reading, with a copy
        return array.numpy()
    shape, fortran_order, dtype, offset = header
    if dtype.hasobject:
        raise ValueError("object arrays are not read (they would need pickle)")
    values = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset)
    return values.reshape(shape, order="F" if fortran_order else "C")


_MAX_NPY_HEADER = 10_000 + 12  # numpy's default max_header_size, and magic and length


def _header_end(data: bytes) -> int:
    """Where a ``.npy`` header ends: magic (6), version (2), its length (2 or 4 bytes)."""
    if len(data) < 8:
        return len(data)
    size = 2 if data[6] == 1 else 4
    return min(len(data), 8 + size + int.from_bytes(data[8 : 8 + size], "little"))


@functools.lru_cache(maxsize=1024)
def _npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int] | None:
    """(shape, Fortran order, dtype, data offset) of a ``.npy`` header, None for a version
    this does not read. Cached: a round's replies repeat the model's few headers, and
    numpy parses each with Python's literal_eval."""
    stream = io.BytesIO(header)
    read_header = _NPY_HEADERS.get(np.lib.format.read_magic(stream))
    if read_header is None:
        return None
    shape, fortran_order, dtype = read_header(stream)
    return shape, fortran_order, dtype, stream.tell()


_TORCH_SUMS = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64))


def _all_finite(array: np.ndarray) -> bool:
    """Whether every value of ``array`` is finite, in one pass without a temporary.

    A NaN or an Inf anywhere makes the sum NaN or Inf, so a finite sum proves them all
    finite; only a sum that overflows needs the value-by-value look. Float arrays are
    summed by torch (2-3x numpy's pairwise sum on one core, measured on 1 M float32);
    the array is only read.
    """
    if array.dtype in _TORCH_SUMS:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            total = float(torch.from_numpy(array).sum())
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            total = float(np.sum(array))
    if math.isfinite(total):
        return True
    return bool(np.isfinite(array).all())


@dataclass(frozen=True)
class ClientEvaluation:
    """One client's evaluation of the model it was sent, on its validation share."""

    node: int
    accuracy: float  # in [0, 1]
    loss: float  # mean cross-entropy (nats)
    examples: int


def read_evaluations(replies: Iterable[Message]) -> tuple[list[ClientEvaluation], list[str]]:
    """The usable evaluation replies, and why each other one was left out (one line each)."""
    evaluations, problems = [], []
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            problems.append(f"node {node}: {reply.error.reason}")
            continue
        metrics = wire.record(reply.content, wire.METRICS, MetricRecord)
        values = [metrics.get(k) if metrics else None for k in _EVAL_KEYS]
        accuracy, loss, examples = values
        valid = all(_is_number(v) and math.isfinite(v) for v in values)
        if not valid or isinstance(examples, float) or examples < 1 or not 0 <= accuracy <= 1:
            problems.append(f"node {node}: evaluation metrics {values} are not usable")
            continue
        evaluations.append(ClientEvaluation(node, float(accuracy), float(loss), int(examples)))
    return evaluations, problems


_EVAL_KEYS = (wire.EVAL_ACCURACY, wire.EVAL_LOSS, wire.NUM_EXAMPLES)
