"""The dashboard in Debian's Chromium (Playwright): a run ingested over gRPC, drawn live.

Takes the screenshot the README shows; `FEDQ_SAVE_SCREENSHOT=1` writes it to
docs/monitor-dashboard.png (otherwise a test run leaves the checkout as it found it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.telemetry import reports
from server.telemetry.sender import TelemetrySender
from tests.monitor.conftest import INGEST_TOKEN, REPO_ROOT
from tests.monitor.sample_runs import (
    ACCURACY,
    FAILURE_REASON,
    HOSTILE_REASON,
    NODES,
    T0,
    sample_run,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = REPO_ROOT / "docs" / "monitor-dashboard.png"
FEDAU_RUN = "20260101-120000-fedau-run7"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium for the module."""
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def console_errors() -> list[str]:
    """Script and console errors of the test's page; a test may remove ones it expects."""
    return []


@pytest.fixture
def page(browser, console_errors: list[str]) -> Iterator[object]:
    """A fresh page that fails the test on any script error or console error."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    errors = console_errors
    page.on("pageerror", lambda error: errors.append(f"script error: {error}"))
    page.on(
        "console",
        lambda msg: (
            errors.append(f"console: {msg.text}")
            # Chromium also logs each failed request; those are reported with their URL below.
            if msg.type == "error" and not msg.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.on(
        "response",
        lambda response: (
            errors.append(f"HTTP {response.status} {response.url}")
            if response.status >= 400
            else None
        ),
    )
    yield page
    context.close()
    assert errors == [], errors


def _send(address: str, messages) -> None:
    sender = TelemetrySender(address, INGEST_TOKEN, backoff_initial=0.05, backoff_max=0.5)
    for msg in messages:
        sender.send(msg)
    stats = sender.close(timeout=15)
    assert (stats.delivered, stats.dropped, stats.abandoned) == (len(messages), 0, 0)


def _dataset(page, canvas: str, label: str) -> list:
    return page.evaluate(
        "([id, label]) => Chart.getChart(id).data.datasets.find((d) => d.label === label).data",
        [canvas, label],
    )


def _wait_rendered(page, round_number: int) -> None:
    """Wait until the page drew `round_number` and refreshed the client sums after it."""
    page.wait_for_function(
        "(n) => document.body.dataset.renderedRound === String(n)"
        " && document.body.dataset.clientsRound === String(n)",
        arg=round_number,
        timeout=15000,
    )


def test_dashboard_shows_a_live_run_with_its_real_numbers(monitor_service, page, tmp_path) -> None:
    monitor = monitor_service()
    run = sample_run(FEDAU_RUN, rounds=12)
    _send(monitor.grpc_address, [run.started, *run.rounds[:7]])  # rounds 0..6, still running

    page.goto(f"{monitor.http_url}/#run={FEDAU_RUN}")
    _wait_rendered(page, 6)
    assert page.text_content("#run-status") == "running"
    assert page.text_content(f'#run-list [data-run-id="{FEDAU_RUN}"] .run-id') == FEDAU_RUN

    # The rest of the run arrives while the page is open: it must appear without a reload.
    _send(monitor.grpc_address, [*run.rounds[7:], run.finished])
    _wait_rendered(page, 12)
    page.wait_for_function("() => document.querySelector('#run-status').textContent === 'finished'")

    _assert_charts(page, run)
    _assert_heatmap(page)
    _assert_reasons_are_text(page)
    assert page.text_content("#tile-accuracy") == f"{100 * ACCURACY[12]:.2f} %"
    assert page.is_hidden("#card-consensus")
    screenshot = SCREENSHOT if os.environ.get("FEDQ_SAVE_SCREENSHOT") else tmp_path / "shot.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 20_000


def _assert_charts(page, run) -> None:
    rounds = run.rounds
    labels = page.evaluate("() => Chart.getChart('chart-accuracy').data.labels")
    assert labels == list(range(13))
    assert _dataset(page, "chart-accuracy", "accuracy") == [r.accuracy for r in rounds]
    assert _dataset(page, "chart-accuracy", "loss") == [r.loss for r in rounds]
    assert _dataset(page, "chart-bytes", "uplink") == [r.bytes_up for r in rounds]
    assert _dataset(page, "chart-bytes", "downlink") == [r.bytes_down for r in rounds]
    assert _dataset(page, "chart-bytes", "fp32 uplink") == [r.fp32_bytes_up for r in rounds]
    assert _dataset(page, "chart-cumulative", "uplink") == [r.cum_bytes_up for r in rounds]
    cum_fp32 = [r.cum_fp32_bytes_down for r in rounds]
    assert _dataset(page, "chart-cumulative", "fp32 downlink") == cum_fp32
    bits = _dataset(page, "chart-bits", "uplink")
    expected_bits = [
        r.uplink_bits_per_param if r.HasField("uplink_bits_per_param") else None for r in rounds
    ]
    assert bits == pytest.approx(expected_bits)
    latest = {n: r.clients[n].figures["fedau_weight"] for r in rounds for n in r.clients}
    weights = _dataset(page, "chart-fedau", "FedAU weight")
    assert weights == [latest[n] for n in sorted(NODES)]
    assert page.is_visible("#card-fedau")
    # The client table lists each client's strategy figures by name, whatever the strategy.
    cells = page.eval_on_selector_all(
        "#clients-table tbody td.figures", "cells => cells.map(c => c.textContent)"
    )
    assert len(cells) == len(NODES) and all(c.startswith("fedau weight ") for c in cells)


def _assert_heatmap(page) -> None:
    cells = page.eval_on_selector_all(
        "#heatmap .hm-cell",
        "cells => cells.map(c => [c.dataset.node, Number(c.dataset.round), c.dataset.state])",
    )
    assert len(cells) == len(NODES) * 12
    states = {(node, r): state for node, r, state in cells}
    assert states[(str(NODES[1]), 3)] == "rejected"
    assert states[(str(NODES[2]), 6)] == "failed"
    assert states[(str(NODES[3]), 4)] == "skipped"
    assert states[(str(NODES[0]), 5)] == "participated"
    assert sum(state == "participated" for state in states.values()) == 4 * 12 - 3 - 1 - 1


def _assert_reasons_are_text(page) -> None:
    reasons = page.eval_on_selector_all(
        "#rejected-table tbody td.reason", "cells => cells.map(c => c.textContent)"
    )
    assert reasons == [FAILURE_REASON, HOSTILE_REASON]
    assert page.eval_on_selector_all("img", "images => images.length") == 0
    assert page.evaluate("() => window.__pwned") is None


def test_consensus_distance_appears_for_lodadac(monitor_service, page) -> None:
    monitor = monitor_service()
    run = sample_run("lodadac-run", strategy="lodadac", rounds=5)
    _send(monitor.grpc_address, run.messages)
    page.goto(f"{monitor.http_url}/#run=lodadac-run")
    _wait_rendered(page, 5)
    assert page.is_visible("#card-consensus")
    expected = [r.figures["consensus_distance"] if r.figures else None for r in run.rounds]
    assert _dataset(page, "chart-consensus", "consensus distance") == expected
    assert page.is_hidden("#card-fedau")


def test_unknown_run_says_so(monitor_service, page, console_errors) -> None:
    monitor = monitor_service()
    page.goto(f"{monitor.http_url}/#run=nope")
    page.wait_for_function("() => document.querySelector('#no-run p').textContent.includes('nope')")
    assert page.text_content("#no-run p") == 'The monitor knows no run "nope".'
    assert page.is_hidden("#run-content")
    # The 404s of the unknown run are the point here.
    console_errors[:] = [
        e for e in console_errors if not e.startswith("HTTP 404") or "/nope" not in e
    ]
    assert console_errors == []


def _names(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "nodes => nodes.map(n => n.textContent)")


def test_dashboard_opens_on_the_running_run_with_readable_names(monitor_service, page) -> None:
    monitor = monitor_service()
    # Flower's run ids are 20-digit numbers; people know runs by their run directory.
    older = sample_run("1111", strategy="fedavg", rounds=2, name="20260101-110000-fedavg-run1111")
    live = sample_run(
        "12465009078818312671",
        rounds=6,
        finished=False,
        name="20260101-120000-fedau-run12465009078818312671",
        started_at=T0 + 100.0,
    )
    newest = sample_run(
        "2222", rounds=1, name="20260101-130000-fedau-run2222", started_at=T0 + 200.0
    )
    _send(monitor.grpc_address, [*older.messages, *live.messages, *newest.messages])

    page.goto(f"{monitor.http_url}/")  # no run named: the running one opens
    _wait_rendered(page, 6)
    assert page.text_content("#run-title") == live.started.name
    assert page.text_content("#run-status") == "running"
    assert _names(page, "#run-list .run-name") == [
        newest.started.name,
        live.started.name,
        older.started.name,
    ]
    assert _names(page, "#run-list .run-id")[1] == "12465009078818312671"
    clients = [f"client-{i}" for i in range(len(NODES))]
    assert _names(page, "#clients-table td.client .client-name") == clients
    assert _names(page, "#clients-table td.client .node-id") == [f"node {n}" for n in NODES]
    assert _names(page, "#heatmap .hm-label.node") == clients
    assert _names(page, "#rejected-table tbody td.node") == ["client-2", "client-1"]
    fedau_labels = page.evaluate("() => Chart.getChart('chart-fedau').data.labels")
    assert fedau_labels == clients

    # With nothing running, the newest run opens.
    _send(monitor.grpc_address, [reports.run_finished(live.started.run_id, finished_at=T0 + 300)])
    page.goto(f"{monitor.http_url}/?fresh")
    _wait_rendered(page, 1)
    assert page.text_content("#run-title") == newest.started.name


def test_non_finite_metrics_and_a_stale_run_are_shown(monitor_service, page) -> None:
    monitor = monitor_service(env={"FEDQ_MONITOR_STALE_AFTER": "2"})
    run = sample_run("nan-run", rounds=3, finished=False)
    run.rounds[2].accuracy = float("inf")
    run.rounds[3].loss = float("nan")
    # No heartbeats: the run goes stale after the monitor's stale_after (2 s).
    sender = TelemetrySender(
        monitor.grpc_address, INGEST_TOKEN, heartbeat=0, backoff_initial=0.05, backoff_max=0.5
    )
    for msg in run.messages:
        sender.send(msg)
    assert sender.close(timeout=15).delivered == len(run.messages)

    page.goto(f"{monitor.http_url}/#run=nan-run")
    _wait_rendered(page, 3)
    assert page.text_content("#tile-loss") == "non-finite"
    assert page.text_content("#run-non-finite") == (
        "Non-finite metrics (NaN or ±Inf): round 2: accuracy; round 3: loss"
    )
    assert _dataset(page, "chart-accuracy", "loss")[3] is None

    time.sleep(2.5)
    page.reload()
    _wait_rendered(page, 3)
    assert page.text_content("#run-status") == "stale"
    assert page.text_content("#run-reason").startswith("Stale: no word from this run's ServerApp")
    assert _names(page, "#run-list .badge") == ["stale"]
