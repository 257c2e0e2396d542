"""GET /healthz: liveness for compose healthchecks and load balancers."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from monitor.api.schemas import Health
from monitor.deps import StoreDep

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "the database does not answer"}},
)
def healthz(store: StoreDep, response: Response) -> Health:
    """200 while the database answers, 503 otherwise. Needs no token."""
    if store.ping():
        return Health(status="ok", database="ok")
    response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="degraded", database="unavailable")
