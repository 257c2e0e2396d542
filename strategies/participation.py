"""FedAU's participation estimator: aggregation weights from each client's history alone.

Per client the server keeps three numbers: `gap` (rounds since the client last took part),
and the running mean and count of the participation intervals recorded so far. With
Bernoulli participation of (unknown) probability p and no cutoff, the mean interval
estimates 1/p, so weighting a participant's update by it undoes the bias that unequal
participation puts on plain averaging (Wang & Ji, ICLR 2024, arXiv 2306.03401).

The numbers live in three numpy arrays, one row per client in the order the clients became
known: 16 bytes a client (int32 gap, float64 mean, int32 count), and the client ids once, in
a table. The mean stays float64 and is updated by the same running-mean step as ever, so the
weights are the same to the last bit as those of one Python float per client.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# Version of `ParticipationEstimator.state()`; `load_state` also reads the version-1 form,
# a dict client -> (gap, interval mean, interval count).
STATE_FORMAT = 2
GAP_DTYPE = np.int32
MEAN_DTYPE = np.float64  # float32 would change the weights
COUNT_DTYPE = np.int32


@dataclass(slots=True, frozen=True)
class ClientHistory:
    """What the estimator remembers of one client (three numbers), as a read-only copy."""

    gap: int = 0  # rounds since the client last took part
    interval_mean: float = 0.0  # mean of the recorded intervals (rounds)
    interval_count: int = 0  # how many intervals were recorded

    def weight(self) -> float:
        """The aggregation weight: mean recorded interval, or 1.0 before any is recorded."""
        return self.interval_mean if self.interval_count else 1.0


class ParticipationEstimator:
    """FedAU's online estimate of each client's aggregation weight ω (≈ 1/p).

    `cutoff` is the paper's K: a client absent for K rounds gets an interval of K recorded
    and its gap restarted, bounding ω by K. None means no cutoff (K = ∞). A client, once
    known, is never forgotten: the server's N only grows.
    """

    def __init__(self, cutoff: int | None = None) -> None:
        if cutoff is not None and cutoff < 1:
            raise ValueError(f"cutoff={cutoff!r} must be a positive number of rounds or None")
        self.cutoff = cutoff
        self.ids: list[str] = []  # client id of each row, in the order clients became known
        self._row: dict[str, int] = {}  # client id -> its row (rebuilt from `ids`, not saved)
        self.gap = np.zeros(0, GAP_DTYPE)  # rounds since the client last took part
        self.interval_mean = np.zeros(0, MEAN_DTYPE)  # mean recorded interval (rounds)
        self.interval_count = np.zeros(0, COUNT_DTYPE)  # intervals recorded

    def __len__(self) -> int:
        """The number of clients known (the server's N)."""
        return len(self.ids)

    @property
    def clients(self) -> dict[str, ClientHistory]:
        """Every known client's history, as copies (for inspection; costs O(N))."""
        return {client: self.history(client) for client in self.ids}

    def history(self, client: str) -> ClientHistory:
        """A copy of `client`'s three numbers (KeyError if the client is not known)."""
        row = self._row[client]
        return ClientHistory(
            int(self.gap[row]), float(self.interval_mean[row]), int(self.interval_count[row])
        )

    def step(self, participants: set[str], known: Iterable[str]) -> dict[str, float]:
        """Return this round's weight ω of each participant, then record the round.

        Weights use only intervals recorded before this round (1.0 for a client with none).
        `known` are clients the server knows of this round, participants included; one seen
        for the first time starts with no history. Every client known before counts as
        known this round too. The weights come in the order of the sorted client ids.
        """
        unknown = set(participants).difference(known, self._row)
        if unknown:
            raise ValueError(f"participants {sorted(unknown)} are not in `known`")
        self.add_clients(known)
        clients = sorted(participants)
        rows = np.array([self._row[c] for c in clients], dtype=np.intp)
        counts, means = self.interval_count[rows], self.interval_mean[rows]
        weights = np.where(counts > 0, means, 1.0)
        result = {client: float(weight) for client, weight in zip(clients, weights, strict=True)}
        self._record(rows, self.gap[rows] + 1)
        absent = np.ones(len(self.ids), dtype=bool)
        absent[rows] = False
        self.gap[rows] = 0
        self.gap[absent] += 1
        if self.cutoff is not None:
            hit = np.flatnonzero(absent & (self.gap >= self.cutoff))
            self._record(hit, np.full(len(hit), self.cutoff, GAP_DTYPE))
            self.gap[hit] = 0
        return result

    def weights(self) -> dict[str, float]:
        """The weight each known client would get if it took part now."""
        weights = np.where(self.interval_count > 0, self.interval_mean, 1.0)
        return {client: float(w) for client, w in zip(self.ids, weights, strict=True)}

    def add_clients(self, clients: Iterable[str]) -> None:
        """Give each client not known yet a row with no history (new rows in id order)."""
        new = sorted(set(clients).difference(self._row))
        if not new:
            return
        for client in new:
            self._row[client] = len(self.ids)
            self.ids.append(client)
        grow = len(new)
        self.gap = np.concatenate([self.gap, np.zeros(grow, GAP_DTYPE)])
        self.interval_mean = np.concatenate([self.interval_mean, np.zeros(grow, MEAN_DTYPE)])
        self.interval_count = np.concatenate([self.interval_count, np.zeros(grow, COUNT_DTYPE)])

    def _record(self, rows: np.ndarray, intervals: np.ndarray) -> None:
        """Fold one interval (rounds) per row into the running means, as
        `mean += (interval - mean) / count` in float64 (the same rounding as Python's)."""
        self.interval_count[rows] += 1
        means = self.interval_mean[rows]
        counts = self.interval_count[rows].astype(MEAN_DTYPE)
        self.interval_mean[rows] = means + (intervals.astype(MEAN_DTYPE) - means) / counts

    def state(self) -> dict[str, Any]:
        """Checkpointable state: the client ids once (a JSON list in one string) and the
        three arrays, row i being client ids[i]."""
        return {
            "format": STATE_FORMAT,
            "ids": json.dumps(self.ids, ensure_ascii=False, separators=(",", ":")),
            "gap": self.gap.copy(),
            "interval_mean": self.interval_mean.copy(),
            "interval_count": self.interval_count.copy(),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what `state()` returned, or the version-1 form (client -> three numbers).

        A state of any other form is refused with a ValueError that says what was found.
        """
        if state.get("format") == STATE_FORMAT:
            ids = json.loads(state["ids"])
            arrays = [
                np.array(state["gap"], dtype=GAP_DTYPE),
                np.array(state["interval_mean"], dtype=MEAN_DTYPE),
                np.array(state["interval_count"], dtype=COUNT_DTYPE),
            ]
        elif "format" not in state and all(_is_v1_entry(v) for v in state.values()):
            ids = sorted(state)
            columns = [[state[c][i] for c in ids] for i in range(3)]
            arrays = [
                np.array(columns[0], dtype=GAP_DTYPE),
                np.array(columns[1], dtype=MEAN_DTYPE),
                np.array(columns[2], dtype=COUNT_DTYPE),
            ]
        else:
            raise ValueError(
                f"participation estimator state of format {state.get('format')!r} cannot be "
                f"read; this fedq reads format {STATE_FORMAT} and the format-1 dict "
                "client -> (gap, interval mean, interval count)"
            )
        if not all(isinstance(c, str) for c in ids) or len(set(ids)) != len(ids):
            raise ValueError("participation estimator state: client ids must be distinct strings")
        if any(a.shape != (len(ids),) for a in arrays):
            raise ValueError(
                f"participation estimator state: {len(ids)} client ids but arrays of shapes "
                f"{[a.shape for a in arrays]}"
            )
        self.ids = list(ids)
        self._row = {client: row for row, client in enumerate(self.ids)}
        self.gap, self.interval_mean, self.interval_count = arrays


def _is_v1_entry(value: object) -> bool:
    """Whether `value` is one client's (gap, interval mean, interval count) of format 1."""
    return isinstance(value, tuple | list) and len(value) == 3
