"""The downlink as changes: the server sends the change of the global model, not the model.

Run config `downlink` = a codec spec other than fp32, bf16 and fp16 (e.g. ``int8+ef``,
``int4+ef``, ``topk:0.05+int8+ef``, ``int4+ans``). The server keeps one *reference model*
x̂, the model every up-to-date client holds, numbered by the server round whose train
broadcast made it (its version). In round t, with the global model x_t:

* with ``+ef``: c = C(x_t − x̂), so whatever the codec lost last time is sent again
  (error feedback kept on the server); x̂ tracks x_t within one round's codec error and
  never drifts;
* without ``+ef``: c = C(x_t − x_{t'}), the change since the last broadcast x_{t'}; x̂ then
  drifts from x by the codec errors summed over rounds (the server still knows it exactly);

and x̂ ← x̂ + c, computed by decoding the server's own bytes, as each client does: the
clients' copy and the server's x̂ agree bit for bit (float32 additions in the same order).

Who gets what (`ChangeDownlink.record_for`): a client that reported holding the previous
reference (its last train reply's ``model-version``) gets c; any other one (new, missed a
broadcast, failed, or a resumed run whose clients start with empty Contexts) gets the whole
reference x̂ once, as exact fp32 (a bf16 copy would leave it off the reference for good),
and is up to date from then on. Every byte of both goes through the metered grid.

The run's first broadcast (server round 1) is the exception: every client is new, so the
server may choose the reference. With a quantizer and error feedback (``int8+ef``,
``int4+ans+ef``, ``mxfp4_e2m1+ef``, ``bf16+ef``, ``topk:0.1+int8+ef``;
`encodes_first_model`) it sends x̂_1 = D(C'(x_1)), the model itself encoded by the
codec's value format C' without its sparsifier (``by-codec`` in the record; a sparse x̂_1
would start every client from a mostly-zero model), instead of 32 bits a value; what C'
lost, x_1 − x̂_1, is the error the next change C(x_2 − x̂_1) sends, as for any change.
``sign`` and codecs without ``+ef`` send the first model in fp32.

Evaluation messages carry a one-off model nobody keeps: C(x − x̂) for a client holding the
current reference, else the whole model in fp32.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import ConfigRecord

from fedq import wire
from quant.codec import Codec

# The codec of a whole model sent to a client that holds no current reference: exact.
WHOLE_MODEL = Codec.from_spec("fp32")


class ChangeDownlink:
    """The server's end of a downlink that sends changes; the state is x̂ and its version."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.reference: dict[str, np.ndarray] | None = None  # x̂, what up-to-date clients hold
        self.version: int | None = None  # the server round whose broadcast made x̂
        self._broadcast: dict[str, np.ndarray] | None = None  # x_{t'}, the last global model
        self._change: ConfigRecord | None = None  # this round's change record (None: none)
        # This round's whole-model record: x̂ in fp32, made when first asked for; in round 1
        # with a quantizing +ef codec, the model encoded by the codec's value format.
        self._whole: ConfigRecord | None = None

    def forget(self) -> None:
        """The clients hold nothing any more (a resumed run): everyone gets whole models."""
        self.reference = self.version = self._broadcast = None
        self._change = self._whole = None

    def broadcast(self, server_round: int, model: Mapping[str, np.ndarray]) -> None:
        """Make round ``server_round``'s reference from the global model ``model``.

        The first time (or when the model's keys or shapes changed) x̂ is ``model`` itself
        and there is no change to send; otherwise x̂ moves by the decoded change.
        """
        model = {key: np.array(value, copy=True) for key, value in model.items()}
        self._change = self._whole = None
        if self.reference is not None and _same_layout(self.reference, model):
            # +ef: the change from what the clients hold; else from the last global model.
            start = self.reference if self.codec.error_feedback else self._broadcast
            change = [model[key] - start[key] for key in model]
            payload = self.codec.encode(change, generator=_generator(server_round))
            decoded = self.codec.decode(payload)
            self.reference = {
                key: self.reference[key] + step for key, step in zip(model, decoded, strict=True)
            }
            self._change = _record(payload, list(model), self.version, server_round)
        elif server_round == 1 and encodes_first_model(self.codec, model):
            dense = self.codec.dense()
            payload = dense.encode(list(model.values()), generator=_generator(server_round))
            decoded = dense.decode(payload)
            self.reference = dict(zip(model, decoded, strict=True))
            self._whole = _record(payload, list(model), None, server_round)
            self._whole[wire.BY_CODEC] = True
        else:
            self.reference = model
        self.version = server_round
        self._broadcast = model

    def record_for(self, held_version: int | None) -> ConfigRecord:
        """The ``model`` record of a train message to a client holding ``held_version``.

        Both records are made once per round and shared by every message.
        """
        if self._change is not None and held_version == self._change[wire.DELTA_OF]:
            return self._change
        if self._whole is None:
            self._whole = _record(
                WHOLE_MODEL.encode(list(self.reference.values())),
                list(self.reference),
                None,
                self.version,
            )
        return self._whole

    def one_off(
        self, server_round: int, model: Mapping[str, np.ndarray], current: bool
    ) -> ConfigRecord:
        """An evaluation's ``model`` record, kept by nobody: C(model − x̂) when the client
        holds the current reference (``current``), else the whole model in fp32."""
        if current and self.reference is not None and _same_layout(self.reference, model):
            change = [np.asarray(model[key]) - self.reference[key] for key in model]
            payload = self.codec.encode(change, generator=_generator(server_round))
            return _record(payload, list(model), self.version, None)
        return _record(WHOLE_MODEL.encode(list(model.values())), list(model), None, None)


def encodes_first_model(codec: Codec, model: Mapping[str, np.ndarray]) -> bool:
    """Whether the run's first broadcast of ``model`` goes out encoded by ``codec.dense()``
    (the codec's value format without its sparsifier): a quantizer with error feedback, on
    a float32 model (what the codec decodes to)."""
    spec = codec.spec
    return (
        spec.error_feedback
        and spec.format_spec is not None  # a number format: not fp32, not sign
        and all(v.dtype == np.float32 for v in model.values())
    )


def _record(
    payload: bytes, keys: list[str], delta_of: int | None, version: int | None
) -> ConfigRecord:
    """A ``model`` record: the payload, its keys, and what the client does with it."""
    record = ConfigRecord({wire.PAYLOAD: payload, wire.KEYS: keys})
    if delta_of is not None:
        record[wire.DELTA_OF] = delta_of
    if version is not None:
        record[wire.MODEL_VERSION] = version
    return record


def _same_layout(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    """Whether two models have the same keys in the same order, shapes and dtypes."""
    return list(a) == list(b) and all(
        a[key].shape == b[key].shape and a[key].dtype == b[key].dtype for key in a
    )


def _generator(server_round: int) -> torch.Generator:
    """The codec's randomness (randk positions, stochastic rounding), seeded by the round."""
    return torch.Generator().manual_seed(server_round)
