"""Communication graphs and doubly-stochastic mixing matrices for decentralized training.

The LoDAdaC family (Liu et al., "LoDAdaC", TMLR 2026, arXiv 2604.09970, Algorithm 1) mixes
each agent's public copy with its neighbours' through a symmetric, doubly-stochastic matrix W
supported on a connected graph. This module builds the graphs (:func:`adjacency`), their
Metropolis-Hastings weights (:func:`mixing_matrix`), checks any W (:func:`check_mixing_matrix`)
and measures its consensus rate (:func:`spectral_gap`). Agents are numbered ``0 .. n-1``.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx
import numpy as np

from fedq.errors import ConfigError

TOPOLOGIES: tuple[str, ...] = ("ring", "torus", "complete", "random-regular")
RANDOM_REGULAR = "random-regular"
_SPEC_HELP = "ring, torus, complete, random-regular:D"
# Sums of a row or column of W may differ from 1 by this much (float64 rounding).
SUM_TOLERANCE = 1e-9
# Redraws of a random regular graph before giving up on a connected one. A random D-regular
# graph with D >= 3 is connected with high probability; D = 2 (a union of cycles) needs more
# draws as n grows, but still far fewer than this for any n a simulation uses.
MAX_REDRAWS = 1000


class TopologyError(ConfigError):
    """A graph or mixing matrix cannot be built, or fails a requirement of the gossip step."""


@dataclass(frozen=True)
class Topology:
    """A kind of communication graph; ``degree`` is D of ``random-regular:D`` (else None)."""

    name: str
    degree: int | None = None

    def __post_init__(self) -> None:
        if self.name not in TOPOLOGIES:
            raise TopologyError(f"topology={self.name!r} is not known; allowed: {_SPEC_HELP}")
        if (self.name == RANDOM_REGULAR) != (self.degree is not None):
            raise TopologyError(
                f"topology={self.name!r} with degree={self.degree!r}: a degree is needed by "
                f"{RANDOM_REGULAR} and only by it"
            )
        if self.degree is not None and self.degree < 1:
            raise TopologyError(f"topology={self.describe()!r}: D must be >= 1")

    def describe(self) -> str:
        """The canonical spec, which :func:`parse_topology` reads back: ``random-regular:3``."""
        return self.name if self.degree is None else f"{self.name}:{self.degree}"


def parse_topology(text: str) -> Topology:
    """Parse ``ring``, ``torus``, ``complete`` or ``random-regular:D`` (D an integer >= 1)."""
    name, sep, arg = text.strip().partition(":")
    if name not in TOPOLOGIES or bool(sep) != (name == RANDOM_REGULAR):
        raise TopologyError(f"topology={text!r} is not known; allowed: {_SPEC_HELP}")
    if name != RANDOM_REGULAR:
        return Topology(name)
    try:
        degree = int(arg)
    except ValueError:
        raise TopologyError(
            f"topology={text!r}: D must be an integer >= 1 (random-regular:D)"
        ) from None
    if degree < 1:
        raise TopologyError(f"topology={text!r}: D must be an integer >= 1 (random-regular:D)")
    return Topology(name, degree)


def adjacency(topology: Topology, n: int, seed: int = 0) -> np.ndarray:
    """The graph on ``n`` agents: a boolean (n, n) array, symmetric, with a False diagonal.

    * ``ring``: agent i talks to i-1 and i+1 (mod n). One agent has no edge, two share one.
    * ``torus``: an r x c grid with wrap-around, agent i at row i // c, column i % c; r is the
      largest divisor of n that is <= sqrt(n), so a prime n gives 1 x n, a ring. A side of
      length 2 links the same pair twice and a side of length 1 links a node to itself; those
      collapse, so degrees are 4 only when both sides are >= 3.
    * ``complete``: every pair of agents.
    * ``random-regular:D``: a random D-regular graph (networkx's near-uniform Steger-Wormald
      sampler) seeded by ``seed``, redrawn from the same seeded stream until it is connected,
      so a seed always gives the same graph (for a given networkx version). Needs D < n and
      n*D even; D = 1 is connected only for n = 2.

    Raises TopologyError (a ConfigError) when the graph cannot exist.
    """
    if n < 1:
        raise TopologyError(f"a topology needs at least 1 agent, got n={n}")
    if topology.degree is not None:
        return _random_regular(topology.degree, n, seed)
    adj = _BUILDERS[topology.name](n)
    np.fill_diagonal(adj, False)
    return adj


def torus_shape(n: int) -> tuple[int, int]:
    """The (rows, columns) of the torus on ``n`` agents: rows the largest divisor <= sqrt(n)."""
    rows = next(r for r in range(math.isqrt(n), 0, -1) if n % r == 0)
    return rows, n // rows


def mixing_matrix(adj: np.ndarray) -> np.ndarray:
    """Metropolis-Hastings weights on the graph ``adj`` (float64, symmetric, doubly stochastic).

    W_ij = 1 / (1 + max(d_i, d_j)) on each edge (d = degree), W_ii = 1 - sum_{j != i} W_ij,
    0 elsewhere. On a D-regular graph every nonzero weight is 1 / (D + 1).
    """
    adj = _checked_adjacency(adj)
    degrees = adj.sum(axis=1)
    w = np.where(adj, 1.0 / (1.0 + np.maximum.outer(degrees, degrees)), 0.0)
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def check_mixing_matrix(w: np.ndarray, adj: np.ndarray | None = None) -> None:
    """Raise TopologyError naming the first defect that makes ``w`` unfit for gossip.

    ``w`` must be square, finite, nonnegative, with rows and columns summing to 1 (within
    1e-9), symmetric (within 1e-9), with no weight between agents that ``adj`` does not
    link (when given), and connected: every agent reaches every other through weights > 0.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] == 0:
        raise TopologyError(f"mixing matrix must be square and non-empty, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise TopologyError("mixing matrix has non-finite entries (NaN or inf)")
    if (w < 0).any():
        raise TopologyError(f"mixing matrix has negative entries (min {w.min():.3g})")
    _check_sums(w, axis=1, what="rows")
    _check_sums(w, axis=0, what="columns")
    if not np.allclose(w, w.T, rtol=0.0, atol=SUM_TOLERANCE):
        raise TopologyError("mixing matrix is not symmetric")
    if adj is not None:
        _check_support(w, _checked_adjacency(adj))
    reached = _reachable_from_zero(w > 0)
    if reached < w.shape[0]:
        raise TopologyError(
            f"mixing matrix's graph is disconnected: agent 0 reaches {reached} of {w.shape[0]}"
        )


def spectral_gap(w: np.ndarray) -> float:
    """1 - rho with rho = ||W - J||_2 (J = all-ones / n): 1 is one-step consensus, 0 none.

    For a symmetric doubly-stochastic W the consensus distance shrinks by a factor rho per
    gossip step. The gap is in (0, 1] when W's graph is connected and W's diagonal is positive
    (Metropolis-Hastings weights always have W_ii >= 1 / (1 + d_i)); 1 means W = J.
    """
    w = np.asarray(w, dtype=np.float64)
    n = w.shape[0]
    rho = np.linalg.norm(w - np.full((n, n), 1.0 / n), ord=2)
    return float(1.0 - rho)


def _ring(n: int) -> np.ndarray:
    adj = np.zeros((n, n), dtype=bool)
    for i in range(n):
        adj[i, (i + 1) % n] = adj[(i + 1) % n, i] = True
    return adj


def _torus(n: int) -> np.ndarray:
    rows, cols = torus_shape(n)
    adj = np.zeros((n, n), dtype=bool)
    for i in range(n):
        r, c = divmod(i, cols)
        for j in (((r + 1) % rows) * cols + c, r * cols + (c + 1) % cols):
            adj[i, j] = adj[j, i] = True
    return adj


def _complete(n: int) -> np.ndarray:
    return np.ones((n, n), dtype=bool)


def _random_regular(degree: int, n: int, seed: int) -> np.ndarray:
    spec = f"{RANDOM_REGULAR}:{degree}"
    if degree >= n:
        raise TopologyError(f"topology={spec!r} needs D < n agents, got n={n}")
    if n * degree % 2:
        raise TopologyError(f"topology={spec!r} needs n*D even, got n={n}")
    if degree == 1 and n > 2:
        raise TopologyError(f"topology={spec!r} is never connected for n={n} > 2; use D >= 2")
    stream = random.Random(seed)  # one stream: redraws are deterministic and seed-specific
    for _ in range(MAX_REDRAWS):
        graph = nx.random_regular_graph(degree, n, seed=stream)
        if nx.is_connected(graph):
            return nx.to_numpy_array(graph, nodelist=range(n), dtype=bool)
    raise TopologyError(f"topology={spec!r}: no connected graph on n={n} in {MAX_REDRAWS} draws")


# The deterministic graphs, by name (random-regular takes a degree and a seed besides n).
_BUILDERS: dict[str, Callable[[int], np.ndarray]] = {
    "ring": _ring,
    "torus": _torus,
    "complete": _complete,
}


def _checked_adjacency(adj: np.ndarray) -> np.ndarray:
    adj = np.asarray(adj)
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1] or adj.shape[0] == 0:
        raise TopologyError(f"adjacency must be square and non-empty, got shape {adj.shape}")
    adj = adj.astype(bool)
    if adj.diagonal().any():
        raise TopologyError("adjacency has self-loops (True on the diagonal)")
    if not np.array_equal(adj, adj.T):
        raise TopologyError("adjacency is not symmetric")
    return adj


def _check_sums(w: np.ndarray, axis: int, what: str) -> None:
    worst = np.abs(w.sum(axis=axis) - 1.0)
    if worst.max() > SUM_TOLERANCE:
        index = int(worst.argmax())
        raise TopologyError(
            f"mixing matrix {what} must sum to 1: {what[:-1]} {index} sums to "
            f"{w.sum(axis=axis)[index]:.12g}"
        )


def _check_support(w: np.ndarray, adj: np.ndarray) -> None:
    if adj.shape != w.shape:
        raise TopologyError(f"adjacency shape {adj.shape} does not match W's {w.shape}")
    off_edge = (w > 0) & ~adj
    np.fill_diagonal(off_edge, False)
    if off_edge.any():
        i, j = (int(k) for k in np.argwhere(off_edge)[0])
        raise TopologyError(f"mixing matrix puts weight {w[i, j]:.3g} on ({i}, {j}), not an edge")


def _reachable_from_zero(links: np.ndarray) -> int:
    """How many agents agent 0 reaches along ``links`` (breadth-first search)."""
    seen = {0}
    queue = deque([0])
    while queue:
        for j in np.flatnonzero(links[queue.popleft()]):
            if int(j) not in seen:
                seen.add(int(j))
                queue.append(int(j))
    return len(seen)
