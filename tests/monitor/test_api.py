"""The REST API through FastAPI's TestClient, over a real SQLite file."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from monitor.api.dashboard import CONTENT_SECURITY_POLICY
from monitor.context import MonitorContext
from monitor.main import create_app
from tests.monitor.conftest import ingest
from tests.monitor.sample_runs import (
    ACCURACY,
    FAILURE_REASON,
    FP32_MESSAGE_BYTES,
    HOSTILE_REASON,
    INT8_MESSAGE_BYTES,
    NODES,
    sample_run,
)

RUN = "20260101-120000-fedau-run7"


@pytest.fixture
def filled(context: MonitorContext, client: TestClient) -> TestClient:
    """The client, with one finished FedAU run, one running LoDAdaC run and one failed run."""
    ingest(context, *sample_run().messages)
    ingest(
        context, *sample_run("lodadac-live", strategy="lodadac", rounds=3, finished=False).messages
    )
    failed = sample_run("broken-run", strategy="fedavg", rounds=1, finished=False)
    from server.telemetry import reports

    ingest(context, *failed.messages, reports.run_finished("broken-run", failed=True, reason="OOM"))
    return client


def test_runs_carry_their_name_for_people(context: MonitorContext, client: TestClient) -> None:
    name = "20260101-120000-fedau-run12465009078818312671"
    ingest(context, *sample_run("12465009078818312671", name=name).messages)
    (listed,) = client.get("/api/runs").json()
    assert (listed["run_id"], listed["name"]) == ("12465009078818312671", name)
    assert client.get("/api/runs/12465009078818312671").json()["name"] == name


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_run_list_with_status_filter(filled: TestClient) -> None:
    runs = filled.get("/api/runs").json()
    assert {r["run_id"]: r["status"] for r in runs} == {
        RUN: "finished",
        "lodadac-live": "running",
        "broken-run": "failed",
    }
    fedau = next(r for r in runs if r["run_id"] == RUN)
    assert fedau["strategy"] == "fedau" and fedau["rounds_done"] == 8
    assert fedau["started_at"].startswith("2025-12-29") and fedau["finished_at"] is not None
    assert [r["run_id"] for r in filled.get("/api/runs?status=running").json()] == ["lodadac-live"]
    assert len(filled.get("/api/runs?limit=1").json()) == 1
    assert len(filled.get("/api/runs?limit=2&offset=2").json()) == 1


def test_run_detail_has_config_and_totals(filled: TestClient) -> None:
    body = filled.get(f"/api/runs/{RUN}").json()
    assert body["config"] == {
        "lr": 0.1,
        "num-server-rounds": 8,
        "quant": "fp32",
        "strategy": "fedau",
    }
    assert (body["num_parameters"], body["clients_expected"], body["model"]) == (9610, 4, "mlp")
    totals = body["totals"]
    assert totals["rounds_reported"] == 9
    assert totals["last_accuracy"] == ACCURACY[8] and totals["best_accuracy"] == ACCURACY[8]
    rounds = filled.get(f"/api/runs/{RUN}/rounds").json()
    assert totals["bytes_up"] == sum(r["bytes_up"] for r in rounds) == rounds[-1]["cum_bytes_up"]
    assert totals["fp32_bytes_up"] == rounds[-1]["cum_fp32_bytes_up"]
    assert (totals["rejected"], totals["failures"]) == (1, 1)
    assert filled.get("/api/runs/broken-run").json()["reason"] == "OOM"


def test_rounds_carry_the_reported_numbers(filled: TestClient) -> None:
    rounds = filled.get(f"/api/runs/{RUN}/rounds").json()
    assert [r["round"] for r in rounds] == list(range(9))
    assert [r["accuracy"] for r in rounds] == list(ACCURACY[:9])
    third = rounds[3]
    assert third["participants"] == [str(n) for n in NODES]
    assert third["rejected"] == [{"node_id": str(NODES[1]), "reason": HOSTILE_REASON}]
    assert third["bytes_up"] == 4 * INT8_MESSAGE_BYTES
    assert third["fp32_bytes_up"] == 4 * FP32_MESSAGE_BYTES
    assert rounds[4]["non_participants"] == [str(NODES[3])]
    assert rounds[6]["failures"] == [{"node_id": str(NODES[2]), "reason": FAILURE_REASON}]
    later = filled.get(f"/api/runs/{RUN}/rounds?since=6").json()
    assert [r["round"] for r in later] == [7, 8]
    assert [r["round"] for r in filled.get(f"/api/runs/{RUN}/rounds?since=2&limit=2").json()] == [
        3,
        4,
    ]
    lodadac = filled.get("/api/runs/lodadac-live/rounds").json()
    assert lodadac[2]["figures"] == {"consensus_distance": 0.6}


def test_clients(filled: TestClient) -> None:
    clients = {c["node_id"]: c for c in filled.get(f"/api/runs/{RUN}/clients").json()}
    assert list(clients) == [str(n) for n in sorted(NODES)]
    rejected = clients[str(NODES[1])]
    assert rejected["rejections"] == 1 and rejected["last_reason"] == HOSTILE_REASON
    assert rejected["rounds_participated"] == 8
    assert rejected["fedau_weight"] == pytest.approx(0.8 - 0.08)
    skipped = clients[str(NODES[3])]
    assert skipped["rounds_participated"] == 6  # not selected in rounds 4 and 8
    assert skipped["last_seen_round"] == 7
    failed = clients[str(NODES[2])]
    assert failed["failures"] == 1 and failed["rounds_participated"] == 7
    assert failed["bytes_up"] == 7 * INT8_MESSAGE_BYTES
    assert failed["bytes_down"] == 8 * FP32_MESSAGE_BYTES
    assert [c["client_id"] for c in clients.values()] == [f"client-{i}" for i in range(4)]
    lodadac = filled.get("/api/runs/lodadac-live/clients").json()
    assert all(c["fedau_weight"] is None for c in lodadac)


@pytest.mark.parametrize("tail", ["", "/rounds", "/clients", "/events"])
def test_unknown_run_is_404_with_detail(client: TestClient, tail: str) -> None:
    response = client.get(f"/api/runs/no-such-run{tail}")
    assert response.status_code == 404
    assert response.json() == {"detail": "run 'no-such-run' is not known"}


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs?status=paused",
        "/api/runs?limit=0",
        "/api/runs?limit=abc",
        "/api/runs?offset=-1",
        f"/api/runs/{RUN}/rounds?since=-2",
        f"/api/runs/{RUN}/rounds?since=x",
        f"/api/runs/{RUN}/rounds?limit=0",
        f"/api/runs/{RUN}/events?since=-5",
        "/api/runs/bad%20id",
    ],
)
def test_bad_query_values_are_422(filled: TestClient, path: str) -> None:
    response = filled.get(path)
    assert response.status_code == 422
    assert response.json()["detail"]


def test_events_of_a_finished_run_replay_and_end(filled: TestClient) -> None:
    response = filled.get(f"/api/runs/{RUN}/events?since=5")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _parse_sse(response.text)
    assert [(e["event"], e.get("id")) for e in events] == [
        ("round", "6"),
        ("round", "7"),
        ("round", "8"),
        ("run", None),
    ]
    assert events[0]["data"]["failures"][0]["reason"] == FAILURE_REASON
    assert events[-1]["data"]["status"] == "finished"


def test_metrics_in_prometheus_format(filled: TestClient) -> None:
    response = filled.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'fedq_monitor_runs{status="running"} 1.0' in text
    assert f'fedq_run_rounds{{run_id="{RUN}",strategy="fedau"}} 8.0' in text
    assert f'fedq_run_accuracy{{run_id="{RUN}",strategy="fedau"}} {ACCURACY[8]}' in text
    rounds = filled.get(f"/api/runs/{RUN}/rounds").json()
    up = float(rounds[-1]["cum_bytes_up"])
    assert f'fedq_run_bytes_up_total{{run_id="{RUN}",strategy="fedau"}} {up}' in text


def test_read_token_guards_the_api_but_not_health(make_context) -> None:
    context = make_context(read_token="reader")
    ingest(context, *sample_run().messages)
    with TestClient(create_app(context)) as client:
        assert client.get("/healthz").status_code == 200
        for path in ("/api/runs", f"/api/runs/{RUN}/rounds", "/metrics"):
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"] == "Bearer"
            wrong = client.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            assert client.get(path, headers={"Authorization": "Bearer reader"}).status_code == 200
        assert client.get("/").status_code == 200  # the page asks for the token itself


def test_dashboard_and_assets_are_served_locally(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    html = page.text
    assert "http://" not in html and "https://" not in html
    for asset in ("/static/app.js", "/static/style.css", "/static/vendor/chart.umd.min.js"):
        assert asset in html
        assert client.get(asset).status_code == 200
    for module in ("app.js", "format.js", "charts.js", "views.js"):
        script = client.get(f"/static/{module}")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]  # served fit for a module
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in script.text, (module, sink)


def test_openapi_documents_every_endpoint(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {
        "/healthz",
        "/api/runs",
        "/api/runs/{run_id}",
        "/api/runs/{run_id}/rounds",
        "/api/runs/{run_id}/clients",
        "/api/runs/{run_id}/events",
        "/metrics",
    }
    assert "404" in paths["/api/runs/{run_id}/rounds"]["get"]["responses"]


def _parse_sse(text: str) -> list[dict]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events
