"""Names of the strategy-specific figures the dashboard knows how to draw.

A strategy may report any figure under any name; these are the ones with a view of their own.
"""

# Per client per round: the client's aggregation weight under FedAU (dimensionless, ≥ 0).
FEDAU_WEIGHT = "fedau_weight"
# Per round: LoDAdaC's consensus distance, (1/n) Σ ‖x̂_i − x̄‖² over the public copies.
CONSENSUS_DISTANCE = "consensus_distance"
