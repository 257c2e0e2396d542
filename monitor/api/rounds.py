"""GET /api/runs/{run_id}/rounds: a run's rounds in order."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from monitor.api.responses import UNKNOWN_RUN
from monitor.api.schemas import RoundOut
from monitor.deps import RunDep, StoreDep
from monitor.validation import MAX_ROUND

router = APIRouter(prefix="/api/runs", tags=["rounds"])

SinceQuery = Annotated[
    int, Query(ge=-1, le=MAX_ROUND, description="only rounds after this one (-1: from round 0)")
]


@router.get("/{run_id}/rounds", response_model=list[RoundOut], responses=UNKNOWN_RUN)
def list_rounds(
    run: RunDep,
    store: StoreDep,
    since: SinceQuery = -1,
    limit: Annotated[int | None, Query(ge=1, le=MAX_ROUND, description="at most this many")] = None,
) -> list[RoundOut]:
    """Per round: accuracy, loss, bytes each way, participants, rejections, strategy figures."""
    return [RoundOut.from_row(row) for row in store.rounds(run.run_id, since, limit)]
