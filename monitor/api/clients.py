"""GET /api/runs/{run_id}/clients: each client's part in a run."""

from __future__ import annotations

from fastapi import APIRouter

from monitor.api.responses import UNKNOWN_RUN
from monitor.api.schemas import ClientOut
from monitor.deps import RunDep, StoreDep

router = APIRouter(prefix="/api/runs", tags=["clients"])


@router.get("/{run_id}/clients", response_model=list[ClientOut], responses=UNKNOWN_RUN)
def list_clients(run: RunDep, store: StoreDep) -> list[ClientOut]:
    """Per client: rounds taken part, last seen, bytes, latest FedAU weight, rejections."""
    return [ClientOut.from_row(row) for row in store.clients(run.run_id)]
