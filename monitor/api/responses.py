"""Error responses shared by the routers, for the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from monitor.api.schemas import ErrorDetail

Responses = dict[int | str, dict[str, Any]]

# Spelled out rather than given as `model`: FastAPI would file a model under the route's own
# media type, and the event stream's errors are JSON, not events. The JSON routes' 404 (below)
# puts ErrorDetail into the schema's components.
_ERROR_JSON = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorDetail"}}}

# Added to every guarded route when a read token is configured.
UNAUTHORIZED: Responses = {
    401: {"content": _ERROR_JSON, "description": "the read token was missing or wrong"}
}
UNKNOWN_RUN: Responses = {
    404: {"model": ErrorDetail, "description": "no run with this id was reported"},
}
UNKNOWN_RUN_STREAM: Responses = {
    404: {"content": _ERROR_JSON, "description": "no run with this id was reported"},
}
