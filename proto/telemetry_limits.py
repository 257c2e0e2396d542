"""Limits of the telemetry contract (proto/telemetry.proto) that a sender and the monitor share.

The .proto states them in its comments; protobuf cannot express them, so they live here, next
to it, and both sides import them: the ServerApp shortens what it sends to fit, the monitor
refuses what does not.
"""

# RunStarted.run_id and every other run_id: 1 to 128 characters from [A-Za-z0-9._:-],
# starting with a letter or digit.
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
# NodeReason.reason and RunFinished.reason: at most 2,000 characters.
MAX_REASON_CHARS = 2_000
# RunStarted.config_json: at most 64 KiB (65,536 bytes of UTF-8).
MAX_CONFIG_BYTES = 64 * 1024
# RunStarted.name and ClientRound.client_id: at most 128 characters.
MAX_LABEL_CHARS = 128
# A serialized report: at most 4 MiB (gRPC's default; the monitor's ingest is set to it and
# the sender refuses a larger report before sending it).
MAX_REPORT_BYTES = 4 * 1024 * 1024
# RoundReport.participants, .non_participants, .failures, .rejected and .clients: at most
# 10,000 entries each (and 10,000 distinct nodes in all).
MAX_NODES_PER_ROUND = 10_000
# Every byte count, num_parameters and num_examples: at most 2**53 - 1, exact as a double and
# in JavaScript; any number of them then sums without overflowing SQLite's int64.
MAX_COUNT = 2**53 - 1
# RunAlive.interval_seconds: 0.1 s to 1 h.
MIN_HEARTBEAT_SECONDS = 0.1
MAX_HEARTBEAT_SECONDS = 3600.0
