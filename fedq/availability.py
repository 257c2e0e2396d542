"""Client availability models: whether this client takes part in a round.

Set for every client with the run-config key `availability`, or per SuperNode with the
node-config key of the same name, which wins (the server never sees these parameters):

    always                      take part in every round (the default)
    bernoulli:P                 take part with probability P each round
    markov:Q:P                  two-state Markov chain with long-run rate P, "speed" Q
    cyclic:L:P                  active max(1, round(L*P)) rounds, then inactive max(1, L - active),
                                from a random phase
    bernoulli:label[:M]         P from the client's label mix (FedAU paper), mean about M
                                (default 0.1); `label` works in markov and cyclic too

Label-correlated P (Wang & Ji, ICLR 2024): one vector b ~ Dirichlet(0.1 * 1_C) shared by
all clients (drawn from the run seed), and P = max(0.02, C * M * <a, b>) with a the
client's label distribution, so who participates correlates with what data they hold.

Every draw is seeded by (run seed, partition id, round), so a run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedq.errors import ConfigError

KINDS = ("always", "bernoulli", "markov", "cyclic")
MIN_LABEL_P = 0.02
LABEL_DIRICHLET = 0.1
_SPEC_HELP = "always, bernoulli:P, markov:Q:P, cyclic:L:P (P may be label or label:M)"


@dataclass(frozen=True)
class Availability:
    """A parsed availability model; `p` is the long-run participation probability."""

    kind: str = "always"
    p: float = 1.0
    q: float = 0.0  # markov speed: inactive -> active probability
    period: int = 1  # cyclic period L (rounds)

    def markov_transitions(self) -> tuple[float, float]:
        """(P(inactive -> active), P(active -> inactive)), as docs/algorithms.md defines them."""
        up, down = self.q, self.q * (1.0 / self.p - 1.0)
        if down > 1.0:  # keep the long-run rate p: scale both by the same factor
            up, down = up / down, 1.0
        return up, down


def parse_availability(text: str, label_p: float | None = None) -> Availability:
    """Parse an availability spec; `label_p(M)` resolves the `label` form (see module doc).

    `label_p` is the label-correlated probability for mean 1 (i.e. C * <a, b>); the
    parsed P is max(0.02, min(1, M * label_p)).
    """
    kind, *args = text.strip().split(":")
    if kind not in KINDS:
        raise ConfigError(f"availability={text!r} is not known; allowed: {_SPEC_HELP}")
    try:
        if kind == "always":
            _expect(text, args, 0)
            return Availability()
        if kind == "bernoulli":
            return Availability("bernoulli", p=_probability(text, args, label_p))
        _expect(text, args[:1], 1)
        first = float(args[0]) if kind == "markov" else int(args[0])
        p = _probability(text, args[1:], label_p)
    except ValueError as exc:
        raise ConfigError(
            f"availability={text!r} is not valid ({exc}); allowed: {_SPEC_HELP}"
        ) from None
    if kind == "markov":
        if not 0.0 < first <= 1.0:
            raise ConfigError(f"availability={text!r}: Q must be in (0, 1]")
        return Availability("markov", p=p, q=first)
    if first < 1:
        raise ConfigError(f"availability={text!r}: L must be >= 1 round")
    return Availability("cyclic", p=p, period=int(first))


def label_correlated_p(labels: np.ndarray, num_classes: int, run_seed: int) -> float:
    """C * <a, b>: the label-correlated participation rate for mean 1 (see module doc)."""
    b = np.random.default_rng([run_seed, 0xFEDA]).dirichlet(np.full(num_classes, LABEL_DIRICHLET))
    a = np.bincount(labels, minlength=num_classes) / max(1, len(labels))
    return float(num_classes * a @ b)


def takes_part(model: Availability, server_round: int, seed: int, partition_id: int) -> bool:
    """Whether the client takes part in `server_round` (rounds start at 1)."""
    if model.kind == "always":
        return True
    if model.kind == "bernoulli":
        return bool(_rng(seed, partition_id, server_round).random() < model.p)
    if model.kind == "cyclic":
        active = max(1, round(model.period * model.p))
        cycle = active + max(1, model.period - active)
        phase = int(_rng(seed, partition_id, 0).integers(cycle))
        return (server_round + phase) % cycle < active
    return _markov_state(model, server_round, seed, partition_id)


def participation_sequence(
    model: Availability, rounds: int, seed: int, partition_id: int
) -> list[bool]:
    """Whether the client takes part in rounds 1..`rounds`, in O(rounds)."""
    if model.kind != "markov":
        return [takes_part(model, t, seed, partition_id) for t in range(1, rounds + 1)]
    return _markov_chain(model, rounds, seed, partition_id)[1 : rounds + 1]


# (model, seed, partition id) -> the chain's states from round 0 on, as far as computed.
_MARKOV_CHAINS: dict[tuple[Availability, int, int], list[bool]] = {}
MAX_MARKOV_CHAINS = 4096  # chains kept in one process (a few KB each at 1,000s of rounds)


def _markov_chain(model: Availability, rounds: int, seed: int, partition_id: int) -> list[bool]:
    """The Markov chain's states in rounds 0..`rounds` (or more), 0 being the start state.

    Each round's draw is seeded by (seed, partition id, round), so the chain depends on the
    round alone and is the same whether replayed from round 1 (a fresh ClientApp process)
    or continued from the states this process computed before (kept here, which makes a
    long run in one process linear in its rounds instead of quadratic).
    """
    key = (model, seed, partition_id)
    states = _MARKOV_CHAINS.get(key)
    if states is None:
        if len(_MARKOV_CHAINS) >= MAX_MARKOV_CHAINS:
            _MARKOV_CHAINS.clear()
        states = _MARKOV_CHAINS[key] = [bool(_rng(seed, partition_id, 0).random() < model.p)]
    up, down = model.markov_transitions()
    for t in range(len(states), rounds + 1):
        draw = _rng(seed, partition_id, t).random()
        states.append(draw >= down if states[-1] else draw < up)
    return states


def _markov_state(model: Availability, server_round: int, seed: int, partition_id: int) -> bool:
    return _markov_chain(model, server_round, seed, partition_id)[server_round]


def _rng(seed: int, partition_id: int, server_round: int) -> np.random.Generator:
    return np.random.default_rng([seed, partition_id, server_round, 0xA7A1])


def _expect(text: str, args: list[str], count: int) -> None:
    if len(args) != count:
        raise ValueError(f"expected {count} parameter(s), got {len(args)}")


def _probability(text: str, args: list[str], label_p: float | None) -> float:
    if args and args[0] == "label":
        _expect(text, args[1:2], len(args[1:]))
        if label_p is None:
            raise ValueError("label-correlated P needs the client's labels")
        mean = float(args[1]) if len(args) > 1 else 0.1
        return max(MIN_LABEL_P, min(1.0, mean * label_p))
    _expect(text, args, 1)
    p = float(args[0])
    if not 0.0 < p <= 1.0:
        raise ValueError(f"P={p} must be in (0, 1]")
    return p
