"""Errors as RFC 9457 problem details: ``application/problem+json`` with type, title, status, detail.

Every error the API returns has this shape, whatever raised it: corral's own errors (mapped to a
status by kind), FastAPI's request validation, Starlette's HTTP errors (unknown path, wrong method),
and anything unexpected (500, with no internals in the body; the server logs the traceback).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError, StatementError
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.errors import (
    ApprovalNotFoundError,
    AuthError,
    CorralError,
    ForbiddenError,
    RunNotFoundError,
    SpecError,
    UnknownAgentError,
    UsageError,
)

log = logging.getLogger("corral.server")

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://corral.dev/problems/"


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    hint: str | None = None
    errors: list[dict[str, Any]] | None = None
    """For a request that fails validation: each field and what is wrong with it."""


class NotFound(UsageError):
    """A resource of the API that does not exist (404)."""


class Conflict(UsageError):
    """The request contradicts the resource's state: a finished run cancelled, a decided approval (409)."""


#: The status and problem type of each kind of corral error (the first match wins).
_KINDS: tuple[tuple[type[CorralError], int, str], ...] = (
    (ForbiddenError, 403, "forbidden"),
    (AuthError, 401, "unauthorized"),
    (RunNotFoundError, 404, "not-found"),
    (ApprovalNotFoundError, 404, "not-found"),
    (UnknownAgentError, 404, "not-found"),
    (NotFound, 404, "not-found"),
    (Conflict, 409, "conflict"),
    (SpecError, 422, "invalid-spec"),
    (UsageError, 400, "bad-request"),
)

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    422: "Unprocessable content",
    500: "Internal server error",
}


def problem(status: int, kind: str, detail: str | None, *, instance: str | None = None, **extra: Any) -> JSONResponse:
    body = Problem(
        type=TYPE_BASE + kind,
        title=_TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        instance=instance,
        **extra,
    )
    headers = {"WWW-Authenticate": 'Bearer realm="corral"'} if status == 401 else None
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, media_type=MEDIA_TYPE, headers=headers)


def install(app: FastAPI) -> None:
    """Make every error of ``app`` a problem details response."""

    @app.exception_handler(CorralError)
    async def corral_error(request: Request, exc: CorralError) -> JSONResponse:
        for kind, status, name in _KINDS:
            if isinstance(exc, kind):
                return problem(status, name, exc.message, instance=request.url.path, hint=exc.hint)
        log.error("%s on %s: %s", type(exc).__name__, request.url.path, exc.message)
        return problem(500, "server-error", exc.message, instance=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type"))}
            for e in exc.errors()
        ]
        return problem(
            422, "invalid-request", "the request does not match the API", instance=request.url.path, errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not-found", 405: "method-not-allowed", 401: "unauthorized", 403: "forbidden"}.get(
            exc.status_code, "http-error"
        )
        return problem(exc.status_code, kind, str(exc.detail), instance=request.url.path)

    @app.exception_handler(UnicodeError)
    async def unstorable_text(request: Request, exc: UnicodeError) -> JSONResponse:
        return problem(400, "bad-request", "the request holds text that cannot be stored (an unpaired surrogate)")

    @app.exception_handler(DataError)
    async def unstorable_value(request: Request, exc: DataError) -> JSONResponse:
        return problem(400, "bad-request", "a value in the request does not fit the store (too long or too large)")

    @app.exception_handler(StatementError)
    async def statement_error(request: Request, exc: StatementError) -> JSONResponse:
        if isinstance(exc.orig, UnicodeError):  # the driver could not encode a parameter
            return await unstorable_text(request, exc.orig)
        return await unexpected(request, exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem(500, "server-error", "the server failed to answer; its log says why", instance=request.url.path)
