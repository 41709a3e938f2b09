"""Every error the HTTP API returns has one shape: `{"error": {"code", "message", "field"}}`.

`install_error_handlers` replaces FastAPI's default validation and HTTP exception handlers (which answer
`{"detail": ...}`) and maps the engine's exceptions to status codes:

| status | code | when |
|---|---|---|
| 400 | `bad_json`, `bad_request` | the body is not valid JSON, or not a JSON object of the expected shape |
| 401 | `unauthorized` | a write without the right `Authorization: Bearer <key>` while CANDGEN_API_KEY is set |
| 404 | `unknown_id`, `not_found` | unknown item (or user where one is required); unknown path |
| 405 | `method_not_allowed` | |
| 413 | `body_too_large`, `batch_too_large` | body over `max_body_bytes`; more events/items than `max_batch` |
| 422 | `validation_error`, `bad_input` | a field out of range or of the wrong type; `field` names its path |
| 503 | `not_ready`, `overloaded`, `reload_in_progress` | engine loading, shedding load, or swapping models |
| 500 | `internal` | a bug; the traceback goes to the log, the process keeps serving |
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from candgen.errors import CandgenError, UnknownIdError
from candgen.serve.protocol import EngineNotReadyError, EngineOverloadedError

log = logging.getLogger("candgen.serve")

_STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    413: "body_too_large", 422: "validation_error", 429: "too_many_requests", 503: "not_ready",
}
_LOCATIONS = ("body", "query", "path", "header", "cookie")


class ApiError(Exception):
    """An error answer raised anywhere in the app: status, stable code, human message, offending field."""

    def __init__(
        self, status: int, code: str, message: str, *, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers


def error_response(
    status: int, code: str, message: str, *, field: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    body = to_json({"error": {"code": code, "message": message, "field": field}})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def field_path(loc: Sequence[Any]) -> str | None:
    """('body', 'events', 0, 'event') → 'events.0.event'; ('query', 'k') → 'k'; ('body',) → None."""
    parts = list(loc[1:] if loc and loc[0] in _LOCATIONS else loc)
    return ".".join(str(p) for p in parts) or None


def validation_error(errors: Sequence[Any]) -> ApiError:
    """The first of pydantic's errors as an ApiError: broken JSON → 400, anything else → 422."""
    if not errors:
        return ApiError(422, "validation_error", "invalid request")
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        pos = loc[1] if len(loc) > 1 else "?"
        return ApiError(400, "bad_json", f"request body is not valid JSON: {ctx.get('error', 'decode error')} "
                                         f"at character {pos}")
    field = field_path(loc)
    if field is None and loc and loc[0] == "body":
        # the whole body is missing or not a JSON object (wrong content type, a list, a string ...)
        return ApiError(400, "bad_request", f"request body must be a JSON object: {first.get('msg', '')}")
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    return ApiError(422, "validation_error", f"{field}: {first.get('msg', 'invalid')}{more}", field=field)


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, field=exc.field, headers=exc.headers)


async def _request_validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    e = validation_error(exc.errors())
    return error_response(e.status, e.code, e.message, field=e.field)


async def _http_exception(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def _unknown_id(_: Request, exc: Exception) -> Response:
    return error_response(404, "unknown_id", str(exc))


async def _not_ready(_: Request, exc: Exception) -> Response:
    return error_response(503, "not_ready", str(exc) or "the engine is not ready", headers={"Retry-After": "1"})


async def _overloaded(_: Request, exc: Exception) -> Response:
    return error_response(503, "overloaded", str(exc) or "the engine is overloaded", headers={"Retry-After": "1"})


async def _bad_input(_: Request, exc: Exception) -> Response:
    return error_response(422, "bad_input", str(exc))


async def _internal(_: Request, exc: Exception) -> Response:
    # Starlette logs and re-raises after this answer; the server keeps serving other requests
    return error_response(500, "internal", f"internal error ({type(exc).__name__}); see the server log")


_HANDLERS: tuple[tuple[type[Exception], Any], ...] = (
    (ApiError, _api_error), (RequestValidationError, _request_validation), (StarletteHTTPException, _http_exception),
    (UnknownIdError, _unknown_id), (EngineNotReadyError, _not_ready), (EngineOverloadedError, _overloaded),
    (CandgenError, _bad_input), (Exception, _internal),
)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through `error_response` (handlers are looked up by the exception's MRO)."""
    for exc, handler in _HANDLERS:
        app.add_exception_handler(exc, handler)


async def handled(request: Request, exc: Exception) -> Response | None:
    """The answer the app's handlers give `exc` (as Starlette picks them, by the exception's MRO), for code that
    runs outside the app's exception middleware (the fast routes of `serve.middleware.Gate`); None for what only
    the outermost handler answers (500), which the caller should let propagate to it."""
    handlers = dict(_HANDLERS)
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            return None if cls is Exception else await handler(request, exc)  # type: ignore[no-any-return]
    return None
