"""GET /api/runs/{run_id}/events: server-sent events with a run's new rounds as they arrive.

The stream first sends every stored round after `since`, then each new one. Events:
`round` (data: a RoundOut, id: the round number) and `run` (data: a RunSummary, whenever the
run's state or totals change). The stream ends after the run finishes or fails, or when the
monitor stops; a client reconnects with `since` set to the last round it has.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from monitor.api.responses import UNKNOWN_RUN_STREAM
from monitor.api.rounds import SinceQuery
from monitor.api.schemas import RoundOut, RunSummary
from monitor.deps import ContextDep, RunDep
from monitor.events import Subscription
from monitor.store import Store

router = APIRouter(prefix="/api/runs", tags=["events"])

# A stream re-reads the store this often even without a wake-up, in case one was lost (seconds).
RECHECK_SECONDS = 30.0


@router.get("/{run_id}/events", response_class=EventSourceResponse, responses=UNKNOWN_RUN_STREAM)
async def run_events(
    run: RunDep, context: ContextDep, since: SinceQuery = -1
) -> AsyncIterator[ServerSentEvent]:
    """Live updates of one run as server-sent events (`round`, `run`)."""
    subscription = context.hub.subscribe(run.run_id)
    try:
        async for event in _stream(context.store, run.run_id, since, subscription):
            yield event
    finally:
        context.hub.unsubscribe(subscription)


async def _stream(
    store: Store, run_id: str, since: int, subscription: Subscription
) -> AsyncIterator[ServerSentEvent]:
    last_round, last_summary = since, None
    while True:
        rounds = await run_in_threadpool(store.rounds, run_id, last_round)
        for row in rounds:
            yield ServerSentEvent(event="round", id=str(row.round), data=RoundOut.from_row(row))
            last_round = row.round
        run = await run_in_threadpool(store.get_run, run_id)
        if run is None:
            return
        summary = RunSummary.model_validate(run)
        if summary != last_summary:
            yield ServerSentEvent(event="run", data=summary)
            last_summary = summary
        # A stale run is followed on: its ServerApp may only have been out of reach.
        if run.status in ("finished", "failed") or subscription.closed:
            return
        await subscription.wait(RECHECK_SECONDS)
        if subscription.closed:
            return
