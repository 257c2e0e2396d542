"""GET /api/runs/{run_id}/clients: each client's part in a run."""

from __future__ import annotations

import threading

from fastapi import APIRouter, Request, Response
from pydantic import TypeAdapter

from monitor.api.responses import UNKNOWN_RUN
from monitor.api.schemas import ClientOut
from monitor.deps import RunDep, StoreDep
from monitor.rows import ClientRow

router = APIRouter(prefix="/api/runs", tags=["clients"])

# Runs whose client list is kept as JSON (a list of 10,000 clients is 3 MB of it).
CACHED_RUNS = 16
_CLIENTS = TypeAdapter(list[ClientOut])


class ClientsJson:
    """The JSON body of each run's client list, kept while the store returns the same list.

    The store keeps a run's list (the same object) until the run's next round; the body
    made from it is kept as long, so many readers of a large run share one serialization.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: dict[str, tuple[list[ClientRow], bytes]] = {}

    def body(self, run_id: str, rows: list[ClientRow]) -> bytes:
        """The JSON of `rows` (the list `run_id` has now), made once per list."""
        with self._lock:
            kept = self._bodies.get(run_id)
            if kept is not None and kept[0] is rows:
                return kept[1]
        body = _CLIENTS.dump_json([ClientOut.from_row(row) for row in rows])
        with self._lock:
            self._bodies.pop(run_id, None)
            self._bodies[run_id] = (rows, body)
            while len(self._bodies) > CACHED_RUNS:
                del self._bodies[next(iter(self._bodies))]
        return body


@router.get("/{run_id}/clients", response_model=list[ClientOut], responses=UNKNOWN_RUN)
def list_clients(run: RunDep, store: StoreDep, request: Request) -> Response:
    """Per client: rounds taken part, last seen, bytes, latest FedAU weight, rejections."""
    cache: ClientsJson = request.app.state.clients_json
    body = cache.body(run.run_id, store.clients(run.run_id))
    return Response(content=body, media_type="application/json")
