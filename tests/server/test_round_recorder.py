"""The recorder names every node of a round by its client id (as the strategy's link knows it)."""

from __future__ import annotations

from server.round_recorder import _attach_client_figures


def test_each_node_of_the_round_gets_its_client_id() -> None:
    record = {
        "clients": {"11": {"bytes_up": 5}, "12": {"bytes_up": 0}},
        "strategy": {
            # client-2 reconnected as node 13, which this round did not reach.
            "nodes": {"client-0": 11, "client-1": 12, "client-2": 13},
            "absent": ["client-1"],
            "rejected": [],
            "client_figures": {"client-0": {"fedau_weight": 1.5}},
        },
    }
    _attach_client_figures(record)
    assert record["clients"] == {
        "11": {"bytes_up": 5, "client_id": "client-0", "figures": {"fedau_weight": 1.5}},
        "12": {"bytes_up": 0, "client_id": "client-1"},
    }
    assert record["non_participants"] == [12]
