"""FastAPI dependencies of the REST API, as `Annotated` aliases."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from monitor.context import MonitorContext
from monitor.rows import RunRow
from monitor.store import Store
from proto.telemetry_limits import RUN_ID_PATTERN

_bearer = HTTPBearer(
    auto_error=False,
    description="The monitor's read token, when one is configured (FEDQ_MONITOR_READ_TOKEN).",
)


def get_context(request: Request) -> MonitorContext:
    """The monitor context the app was built with."""
    return request.app.state.monitor


ContextDep = Annotated[MonitorContext, Depends(get_context)]


def get_store(context: ContextDep) -> Store:
    """The monitor's store."""
    return context.store


StoreDep = Annotated[Store, Depends(get_store)]


def require_reader(
    context: ContextDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuse the request (401) unless it carries the read token, when one is configured."""
    expected = context.settings.read_token
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="a valid read token is required: 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


RunId = Annotated[
    str,
    Path(
        pattern=RUN_ID_PATTERN,
        description="the run id the ServerApp reported",
        examples=["20250101-120000-fedavg-run1"],
    ),
]


def get_run(run_id: RunId, store: StoreDep) -> RunRow:
    """The run named in the path, or 404 if the monitor never heard of it."""
    row = store.get_run(run_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"run {run_id!r} is not known")
    return row


RunDep = Annotated[RunRow, Depends(get_run)]
