"""GET /api/runs and /api/runs/{run_id}: the runs, their configuration and totals."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from monitor.api.responses import UNKNOWN_RUN
from monitor.api.schemas import RunDetail, RunStatus, RunSummary
from monitor.deps import RunDep, StoreDep

router = APIRouter(prefix="/api/runs", tags=["runs"])

MAX_PAGE = 1000


@router.get("", response_model=list[RunSummary])
def list_runs(
    store: StoreDep,
    status: Annotated[RunStatus | None, Query(description="only runs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="runs per page")] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="runs to skip")] = 0,
) -> list[RunSummary]:
    """Runs, the most recently started first."""
    return [RunSummary.model_validate(row) for row in store.list_runs(status, limit, offset)]


@router.get("/{run_id}", response_model=RunDetail, responses=UNKNOWN_RUN)
def get_run(run: RunDep) -> RunDetail:
    """One run: its configuration and totals (bytes, accuracy, rejections)."""
    return RunDetail.from_row(run)
