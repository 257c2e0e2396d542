"""End to end: Flower's real SuperLink and SuperNodes over gRPC, started by `fedq demo`."""

import itertools
import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from cli.processes import free_port, wait_for_port
from fedq import wire
from fedq.models import ModelSpec, build_model
from fedq.run_directory import read_rounds
from quant import Codec
from server.metering import content_bytes
from strategies.fedau import WEIGHT_FIGURE
from strategies.lodadac import CONSENSUS_FIGURE
from tests.conftest import FEDQ, leftover_processes

CHROMIUM = Path("/usr/bin/chromium")

SUMMARY_KEYS = {
    "strategy",
    "rounds",
    "final_accuracy",
    "final_loss",
    "bytes_up",
    "bytes_down",
    "wall_seconds",
    "run_dir",
}


def _check_run(result, demo_dir, summary_path, rounds, min_gain=0.3):
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary.keys() >= SUMMARY_KEYS
    run_dir = Path(summary["run_dir"])
    assert run_dir.parent == demo_dir
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    records = read_rounds(run_dir / "rounds.jsonl")
    assert [r["round"] for r in records] == list(range(rounds + 1))
    assert summary["rounds"] == rounds
    assert summary["final_accuracy"] == records[-1]["accuracy"]
    # Training helped: the final global model is clearly better than the initial one.
    assert summary["final_accuracy"] > records[0]["accuracy"] + min_gain
    assert leftover_processes(demo_dir) == [], "every process the demo started is gone"
    return summary, records


def _mlp_zeros() -> list[np.ndarray]:
    """Zero arrays shaped like the demo's MLP: a dense codec's size depends on shapes only."""
    return [
        np.zeros(v.shape, np.float32)
        for v in build_model(ModelSpec("mlp"), seed=0).state_dict().values()
    ]


@pytest.mark.e2e
def test_deployment_engine_two_supernodes_three_rounds(run_demo, tmp_path):
    summary_path = tmp_path / "summary.json"
    result, demo_dir = run_demo("--clients", "2", "--rounds", "3", "--summary", str(summary_path))
    summary, records = _check_run(result, demo_dir, summary_path, rounds=3)
    assert summary["clients"] == 2 and summary["strategy"] == "fedavg"
    assert summary["quant"] == "fp32"
    for record in records[1:]:
        assert len(record["participants"]) == 2 and record["failures"] == []
        clients = record["clients"].values()
        assert record["bytes_up"] == sum(c["bytes_up"] for c in clients) > 0
        assert record["bytes_down"] == sum(c["bytes_down"] for c in clients) > 0
        # fp32 weights plus a little framing: between 32 and 36 bits per parameter.
        assert 32.0 < record["uplink_bits_per_param"] < 36.0
    assert summary["bytes_up"] == records[-1]["cum_bytes_up"]
    assert "fedq demo result" in result.stdout
    # The demo's monitor received one report per round over gRPC and kept them in SQLite.
    assert summary["dashboard_url"] in result.stdout
    with sqlite3.connect(demo_dir / "monitor.sqlite") as db:
        (status,) = db.execute("SELECT status FROM runs").fetchone()
        stored = db.execute("SELECT round, accuracy FROM rounds ORDER BY round").fetchall()
    assert status == "finished"
    assert stored == [(r["round"], r["accuracy"]) for r in records]


@pytest.mark.e2e
def test_simulation_engine_runs_the_same_app_with_quantized_training(run_demo, tmp_path):
    summary_path = tmp_path / "summary.json"
    result, demo_dir = run_demo(
        "--engine",
        "simulation",
        "--clients",
        "2",
        "--rounds",
        "3",
        "--quant",
        "w=mxfp8_e4m3,a=int8:block=0,g=fp8_e5m2",
        "--summary",
        str(summary_path),
    )
    summary, _ = _check_run(result, demo_dir, summary_path, rounds=3)
    assert summary["clients"] == 2
    assert summary["quant"] == "w=mxfp8_e4m3,a=int8:block=0,g=fp8_e5m2:sr"
    config = json.loads((Path(summary["run_dir"]) / "config.json").read_text())
    assert config["quant"] == "w=mxfp8_e4m3,a=int8:block=0,g=fp8_e5m2"


@pytest.mark.e2e
def test_fedau_raises_the_weight_of_a_rarely_participating_client(run_demo, tmp_path):
    summary_path = tmp_path / "summary.json"
    # Client 2 takes part with probability 0.3 (seeded: rounds 5 and 6 of this run).
    result, demo_dir = run_demo(
        "--strategy",
        "fedau",
        "--clients",
        "3",
        "--rounds",
        "6",
        "--availability",
        "2=bernoulli:0.3",
        "--summary",
        str(summary_path),
    )
    summary, records = _check_run(result, demo_dir, summary_path, rounds=6, min_gain=0.2)
    assert summary["strategy"] == "fedau"
    figures = [r["strategy"] for r in records[1:]]
    weights = [
        {c: f[WEIGHT_FIGURE] for c, f in outcome["client_figures"].items()} for outcome in figures
    ]
    rare = [w["client-2"] for w in weights if "client-2" in w]
    assert len(rare) >= 2 and rare[-1] > 1.0, figures
    assert all(w.get("client-0") == 1.0 for w in weights)
    assert sum("client-2" in f["absent"] for f in figures) >= 2
    # Strategy states hold numpy arrays: the checkpoint is a trusted pickle, not weights.
    checkpoint = torch.load(Path(summary["run_dir"]) / "checkpoint.pt", weights_only=False)
    assert checkpoint["round"] == 6
    estimator = checkpoint["strategy"]["strategy"]["estimator"]
    assert sorted(json.loads(estimator["ids"])) == ["client-0", "client-1", "client-2"]
    assert len(estimator["gap"]) == 3
    _check_dashboard_of_finished_run(demo_dir, records)


def _check_dashboard_of_finished_run(demo_dir, records):
    """Reopen the demo's monitor database and read the charts in Debian's Chromium."""
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    http_port, grpc_port = free_port(), free_port()
    monitor = subprocess.Popen(
        [
            FEDQ,
            "monitor",
            "--dev",
            "--port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
            "--db",
            str(demo_dir / "monitor.sqlite"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port("127.0.0.1", http_port, 60, monitor)
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{http_port}/")
            page.click("#run-list [data-run-id]")
            page.wait_for_function(
                "(n) => document.body.dataset.renderedRound === String(n)",
                arg=records[-1]["round"],
                timeout=15000,
            )
            accuracy = page.evaluate(
                "() => Chart.getChart('chart-accuracy').data.datasets"
                ".find((d) => d.label === 'accuracy').data"
            )
            weights = page.evaluate("() => Chart.getChart('chart-fedau').data.datasets[0].data")
            browser.close()
    finally:
        os.killpg(monitor.pid, signal.SIGTERM)
        monitor.wait(timeout=20)
    assert accuracy == [r["accuracy"] for r in records]
    last = records[-1]["strategy"]["client_figures"]
    assert sorted(weights) == sorted(f[WEIGHT_FIGURE] for f in last.values())


@pytest.mark.e2e
def test_int4_uplink_bytes_are_the_encoded_payloads_plus_message_overhead(run_demo, tmp_path):
    summary_path = tmp_path / "summary.json"
    result, demo_dir = run_demo(
        "--clients",
        "2",
        "--rounds",
        "3",
        "--compress",
        "int4",
        "--downlink",
        "bf16",
        "--no-monitor",
        # Flower's own process handling (a fresh ClientApp process per message), which the
        # comparison benchmark runs: the same app, the same bytes.
        "--stock-flower",
        "--summary",
        str(summary_path),
    )
    summary, records = _check_run(result, demo_dir, summary_path, rounds=3)
    assert (summary["compress"], summary["downlink"]) == ("int4", "bf16")
    # Dense codecs make sizes that depend on the shapes only, so they are known in advance.
    shapes = _mlp_zeros()
    uplink_payload = len(Codec.from_spec("int4").encode(shapes))
    downlink_payload = len(Codec.from_spec("bf16").encode(shapes))
    for record in records[1:]:
        assert len(record["participants"]) == 2 and record["rejected"] == []
        for client in record["clients"].values():
            assert client["payload_bytes_up"] == uplink_payload
            assert client["payload_bytes_down"] == downlink_payload
            # The rest of the reply, serialized by Flower: its records around the payload.
            reply = RecordDict(
                {
                    wire.UPDATE: ConfigRecord({wire.PAYLOAD: bytes(uplink_payload)}),
                    wire.METRICS: MetricRecord(
                        {
                            wire.NUM_EXAMPLES: client["num_examples"],
                            wire.TRAIN_LOSS: client["train_loss"],
                        }
                    ),
                    wire.CLIENT: ConfigRecord(
                        {
                            wire.CLIENT_ID: "client-0",
                            wire.AVAILABILITY_P: 1.0,
                            wire.PARTICIPATED: True,
                        }
                    ),
                }
            )
            assert client["bytes_up"] == content_bytes(reply)
        assert record["payload_bytes_up"] == 2 * uplink_payload
        assert record["bytes_up"] == sum(c["bytes_up"] for c in record["clients"].values())
        # int4 with a float32 scale per 64 values: 4.5 bits per parameter of payload.
        assert 4.5 <= record["uplink_payload_bits_per_param"] < 4.7
    assert summary["payload_bytes_up"] == 6 * uplink_payload
    assert summary["bytes_up"] == records[-1]["cum_bytes_up"]
    assert summary["uplink_ratio_to_fp32"] > 6.0


@pytest.mark.e2e
def test_a_downlink_of_changes_sends_the_model_then_changes_all_in_int8(run_demo, tmp_path):
    summary_path = tmp_path / "summary.json"
    result, demo_dir = run_demo(
        "--clients",
        "2",
        "--rounds",
        "3",
        "--compress",
        "int4",
        "--downlink",
        "int8+ef",
        "--no-monitor",
        "--summary",
        str(summary_path),
    )
    summary, records = _check_run(result, demo_dir, summary_path, rounds=3)
    assert (summary["compress"], summary["downlink"]) == ("int4", "int8+ef")
    shapes = _mlp_zeros()
    whole = len(Codec.from_spec("fp32").encode(shapes))
    int8 = len(Codec.from_spec("int8").encode(shapes))  # dense: its size is the shapes'
    for record in records[1:]:
        # Every client kept the reference it was sent and reported it: no failures. Round
        # 1's model goes out in int8 (an +ef codec), then only int8 changes: every message
        # is a dense int8 payload, about a quarter of the fp32 model, every byte counted.
        assert len(record["participants"]) == 2 and record["failures"] == []
        for client in record["clients"].values():
            assert client["payload_bytes_down"] == int8 < whole / 3
            assert client["bytes_down"] > int8
        assert record["bytes_down"] == sum(c["bytes_down"] for c in record["clients"].values())
    assert summary["payload_bytes_down"] == 6 * int8


@pytest.mark.e2e
def test_lodadac_gossips_on_a_ring_with_top_k_and_the_agents_converge(run_demo, tmp_path):
    summary_path = tmp_path / "summary.json"
    result, demo_dir = run_demo(
        "--strategy",
        "lodadac",
        "--clients",
        "4",
        "--rounds",
        "6",
        "--compress",
        "topk:0.3+int8",
        "--no-monitor",
        "--summary",
        str(summary_path),
    )
    summary, records = _check_run(result, demo_dir, summary_path, rounds=6, min_gain=0.5)
    assert summary["strategy"] == "lodadac" and summary["compress"] == "topk:0.3+int8"
    distances = [r["figures"][CONSENSUS_FIGURE] for r in records[1:]]
    peak = int(np.argmax(distances))
    assert peak < len(distances) - 2 and distances[-1] < 0.8 * distances[peak], distances
    # Every agent's state crossed every round in its SuperNode's Context state, through the
    # warm ClientApps of fedq-superexec: a lost state would be a failure (and a repair).
    for record in records[1:]:
        assert len(record["participants"]) == 4 and record["rejected"] == []
        assert record["failures"] == [] and record["non_participants"] == []
    # Round 1 sends every agent x0; later rounds only the messages its two ring neighbours
    # sent the round before: their encoded payloads, relayed byte for byte.
    for before, record in itertools.pairwise(records[1:]):
        assert record["payload_bytes_down"] == 2 * before["payload_bytes_up"]
    assert records[1]["bytes_down"] > 2 * records[2]["bytes_down"]
    config = json.loads((Path(summary["run_dir"]) / "config.json").read_text())
    assert (config["topology"], config["optimizer"], config["lr"]) == ("ring", "adam", 0.01)


@pytest.mark.e2e
def test_clients_bring_their_own_data_and_evaluate_without_server_data(run_demo, tmp_path):
    from PIL import Image

    from fedq.data import load_digits_split

    train, _ = load_digits_split()
    site_a = tmp_path / "site-a.csv"
    header = ",".join(["label", *(f"p{i}" for i in range(64))])
    rows = [
        ",".join([str(int(y)), *(f"{v:g}" for v in x.ravel())])
        for x, y in zip(train.x[:300], train.y[:300], strict=True)
    ]
    site_a.write_text("\n".join([header, *rows]) + "\n")
    site_b = tmp_path / "site-b"
    for i in range(300, 600):
        folder = site_b / f"digit-{int(train.y[i])}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (train.x[i] * 255).round().astype(np.uint8)
        Image.fromarray(pixels, mode="L").resize((16, 16)).save(folder / f"{i}.png")
    summary_path = tmp_path / "summary.json"
    result, demo_dir = run_demo(
        "--clients",
        "3",
        "--rounds",
        "3",
        "--data",
        f"0=csv:{site_a}",
        "--data",
        f"1=imagefolder:{site_b}",
        "--set",
        "server-data=''",
        "--no-monitor",
        "--summary",
        str(summary_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["evaluation"] == "federated"
    records = read_rounds(Path(summary["run_dir"]) / "rounds.jsonl")
    assert records[0]["accuracy"] is None  # nothing is evaluated before the first round
    for record in records[1:]:
        assert record["evaluation"] == "federated" and record["failures"] == []
        assert len(record["participants"]) == 3
        clients = record["clients"].values()
        evaluated = [c for c in clients if "eval_accuracy" in c.get("figures", {})]
        assert len(evaluated) == 3
        # The round's accuracy is the clients' own, weighted by their validation examples.
        examples = sum(c["eval_examples"] for c in evaluated)
        weighted = sum(c["figures"]["eval_accuracy"] * c["eval_examples"] for c in evaluated)
        assert record["accuracy"] == pytest.approx(weighted / examples)
    # The two own-data clients trained on 270 of their 300 examples (10 % held out).
    examples = sorted(c["num_examples"] for c in records[-1]["clients"].values())
    assert examples[:2] == [270, 270]
    assert summary["final_accuracy"] > 0.6
    assert leftover_processes(demo_dir) == []
