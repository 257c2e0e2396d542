"""Bounds on the size of client updates: refuse outliers, clip the rest (all optional).

A reply can pass every check of `strategies.replies` — right keys, shapes, finite values —
and still be far larger than any honest update: a client whose training diverged, or one
that scales its update to take over the average. Three run-config keys bound the L2 norm
‖Δ‖ of an update (all arrays together), each off at 0:

* ``max-update-norm`` M: an update with ‖Δ‖ > M is refused;
* ``norm-outlier-factor`` F: with at least `MIN_UPDATES_FOR_OUTLIERS` updates in the
  round, one with ‖Δ‖ > F · median‖Δ‖ of the round's updates is refused;
* ``clip-norm`` C: every remaining update with ‖Δ‖ > C is scaled down to ‖Δ‖ = C (the
  server-side clipping of DP-FedAvg, without the noise).

A refused update is a rejection with its reason like any other (the client counts as
absent for FedAU and is repaired for LoDAdaC); a clipped one is reported as a per-client
figure. Clipping changes the update the client sent, so it does not apply to LoDAdaC,
whose clients keep the update they sent as part of their public copy.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from strategies.replies import ClientUpdate, Rejection, RoundReplies

# Fewer updates than this make the median no yardstick: outliers are not judged.
MIN_UPDATES_FOR_OUTLIERS = 3
CLIPPED_FIGURE = "clipped_from_norm"  # per client: ‖Δ‖ before clipping


@dataclass(frozen=True)
class NormBounds:
    """The three bounds (0: off); ``max_norm`` and ``clip`` in units of ‖Δ‖₂."""

    max_norm: float = 0.0
    outlier_factor: float = 0.0
    clip: float = 0.0

    @property
    def active(self) -> bool:
        """Whether any bound is set."""
        return bool(self.max_norm or self.outlier_factor or self.clip)

    def apply(self, replies: RoundReplies) -> dict[str, float]:
        """Refuse and clip ``replies.updates`` in place; return ‖Δ‖ before clipping of
        each clipped client."""
        if not self.active or not replies.updates:
            return {}
        norms = {update.client: update_norm(update) for update in replies.updates}
        median = float(np.median(list(norms.values())))
        judge_outliers = self.outlier_factor and len(norms) >= MIN_UPDATES_FOR_OUTLIERS
        kept: list[ClientUpdate] = []
        clipped: dict[str, float] = {}
        for update in replies.updates:
            norm = norms[update.client]
            if self.max_norm and norm > self.max_norm:
                reason = f"update norm {norm:.4g} exceeds max-update-norm={self.max_norm:g}"
            elif judge_outliers and norm > self.outlier_factor * median:
                reason = (
                    f"update norm {norm:.4g} is more than norm-outlier-factor="
                    f"{self.outlier_factor:g} times the round's median {median:.4g}"
                )
            else:
                reason = ""
            if reason:
                replies.rejected.append(Rejection(update.client, update.node, reason))
                continue
            if self.clip and norm > self.clip:
                scale = self.clip / norm
                delta = {k: v * scale for k, v in update.delta.items()}
                update = dataclasses.replace(update, delta=delta, clipped=True)
                clipped[update.client] = norm
            kept.append(update)
        replies.updates[:] = kept
        return clipped


def update_norm(update: ClientUpdate) -> float:
    """‖Δ‖₂ over all of an update's arrays (float64)."""
    return math.sqrt(sum(float(np.dot(v.ravel(), v.ravel())) for v in update.delta.values()))
