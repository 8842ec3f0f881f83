"""HTTP conventions every service shares: one error body for every answer that is not a
success (the field and the reason), a body size limit, and bearer-token scopes (read for BI
tools, write for systems and reps)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Literal

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from pydantic import BaseModel
from pymongo.errors import ConnectionFailure
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

Scope_ = Literal["read", "write", "admin"]
# Each scope includes those before it: admin (configuration: scoring rules, pipelines,
# products, sales teams) may also write, and write (the day-to-day work) may also read.
SCOPE_RANK: dict[str, int] = {"read": 0, "write": 1, "admin": 2}

# What a 503 for an unreachable database tells clients to wait before trying again.
DATABASE_RETRY_AFTER_SECONDS = 5


class FieldProblem(BaseModel):
    field: str
    reason: str


class Problem(BaseModel):
    """Error body of every answer that is not a success (4xx and 5xx)."""

    error: str
    message: str
    fields: list[FieldProblem] = []


class ApiError(Exception):
    """Raised by routes for a 4xx answer in the shared error format."""

    def __init__(
        self,
        status_code: int,
        error: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.headers = headers
        self.problem = Problem(
            error=error,
            message=message,
            fields=[FieldProblem(field=field, reason=message)] if field else [],
        )


def problem_response(
    status_code: int, error: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        Problem(error=error, message=message).model_dump(), status_code=status_code, headers=headers
    )


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] if len(parts) > 1 else parts
    return ".".join(parts) or "(body)"


async def _validation_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        problem = Problem(
            error="malformed_json",
            message="The request body is not valid JSON: "
            + "; ".join(str(err.get("ctx", {}).get("error", err["msg"])) for err in errors),
        )
        return JSONResponse(problem.model_dump(), status_code=status.HTTP_400_BAD_REQUEST)
    fields = [FieldProblem(field=_field_name(tuple(err["loc"])), reason=err["msg"]) for err in errors]
    problem = Problem(
        error="validation_failed",
        message="; ".join(f"{f.field}: {f.reason}" for f in fields),
        fields=fields,
    )
    return JSONResponse(problem.model_dump(), status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.problem.model_dump(), status_code=exc.status_code, headers=exc.headers)


async def _http_error_handler(request: Request, exc: Exception) -> Response:
    """What Starlette and FastAPI raise themselves (no route, wrong method, a body that cannot
    be parsed), in the shared format; their headers (``Allow`` on 405) stay."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code < 200 or exc.status_code in (204, 304):  # no body allowed
        return Response(status_code=exc.status_code, headers=headers)
    try:
        phrase = HTTPStatus(exc.status_code).phrase
    except ValueError:
        phrase = "Error"
    error = phrase.lower().replace(" ", "_").replace("-", "_")
    if exc.status_code == status.HTTP_404_NOT_FOUND:
        message = f"There is no operation at {request.url.path[:200]}; /docs lists them."
    elif exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        allowed = _allowed_methods(request) or (headers or {}).get("Allow", "")
        headers = {**(headers or {}), "Allow": allowed} if allowed else headers
        message = f"{request.method} is not allowed here" + (f"; use {allowed}." if allowed else ".")
    elif isinstance(exc.detail, str) and exc.detail and exc.detail != phrase:
        message = exc.detail if exc.detail.endswith(".") else exc.detail + "."
    else:
        message = phrase + "."
    return problem_response(exc.status_code, error, message, headers)


_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> str:
    """Every method some route takes at this path (Starlette's ``Allow`` names only those of
    the first route that matched the path, e.g. POST when GET is there too)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    )


class _Throttled:
    """A warning at most once per ``every`` seconds, with how many were held back: during an
    outage every request fails the same way, and one line says it as well as thousands."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self._last = float("-inf")
        self._held = 0

    def warning(self, message: str, **extra: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            self._held += 1
            return
        log.warning(message, extra={**extra, "similar_since_last": self._held})
        self._last, self._held = now, 0


_outage_log = _Throttled()


async def _database_unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    """PyMongo's connection-type errors (no server selected in time, a connection lost, a
    network timeout): the request was fine, the database is away. 503 asks the caller to
    retry; the body names no host (the exception text does, so only the log gets it)."""
    _outage_log.warning(
        "database not reachable, answering 503",
        error=f"{type(exc).__name__}: {exc}"[:500],
        path=request.url.path,
    )
    return problem_response(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "unavailable",
        f"The database is not reachable; try again in {DATABASE_RETRY_AFTER_SECONDS} seconds.",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(ConnectionFailure, _database_unavailable_handler)


class UnexpectedErrors:
    """Answers an exception nothing else handled with 500 in the shared format, without
    internals, and logs it once (with its trace id, which the body gives for reference).
    Starlette's own last-resort handler would answer plain text and re-raise, so the server
    logged the traceback a second time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:
            span = trace.get_current_span()
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            log.exception(
                "request failed unexpectedly",
                extra={"method": scope.get("method"), "path": scope.get("path")},
            )
            if started:  # the answer is under way; the server ends the connection
                return
            context = span.get_span_context()
            reference = f" (trace id {context.trace_id:032x})" if context.is_valid else ""
            response = problem_response(
                status.HTTP_500_INTERNAL_SERVER_ERROR,
                "internal_error",
                f"The request failed unexpectedly; it has been logged{reference}.",
            )
            await response(scope, receive, send)


class BodySizeLimit:
    """Refuses bodies over ``max_bytes`` with 413 before anything is parsed or stored.

    A declared Content-Length over the limit is refused at once. A chunked body is counted as
    it arrives: once it passes the limit, reading stops (the rest is never buffered) and
    whatever the app then answers (FastAPI turns the failed read into a 400, a route into an
    error of its own) is replaced by the 413. Routes read their whole body before they write
    anything, so a refused request has changed nothing.

    The ``large_paths`` (streamed imports) have their own, larger ``large_max_bytes``."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        large_paths: frozenset[str] = frozenset(),
        large_max_bytes: int = 0,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.large_paths = large_paths
        self.large_max_bytes = large_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.max_bytes
        if scope.get("path") in self.large_paths:
            max_bytes = max(max_bytes, self.large_max_bytes)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._refuse(send, max_bytes)
            return
        received = 0
        exceeded = False
        started = False

        async def limited() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise _TooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    exceeded = True
                    raise _TooLarge
            return message

        async def unless_refused(message: Message) -> None:
            nonlocal started
            if exceeded:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, unless_refused)
        except Exception:
            # Once the body overflowed, any failure is the app giving up on reading it.
            if not exceeded:
                raise
        if exceeded and not started:
            await self._refuse(send, max_bytes)

    async def _refuse(self, send: Send, max_bytes: int) -> None:
        body = (
            Problem(error="payload_too_large", message=f"The request body exceeds {max_bytes} bytes.")
            .model_dump_json()
            .encode()
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                # The rest of the body is never read: close rather than drain the connection.
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def _digest(token: bytes) -> bytes:
    # Equal-length digests: the comparison takes the same time whatever the token's length.
    return hashlib.sha256(token).digest()


class TokenAuth:
    """Bearer tokens with a scope; ``admin`` implies ``write``, which implies ``read``. No
    tokens configured = open (local development), which the service logs loudly at start.

    Tokens are compared as bytes (the header's raw bytes; configured tokens as UTF-8, with
    surrogate escapes for bytes the environment could not decode), so any byte a client
    sends is simply a wrong token, never an error."""

    def __init__(self, spec: str | None) -> None:
        self.tokens: dict[str, Scope_] = {}
        for pair in (spec or "").split(","):
            if not pair.strip():
                continue
            token, _, scope = pair.strip().partition(":")
            if scope not in SCOPE_RANK or not token:
                raise ValueError(
                    "CRM_API_TOKENS entries must be 'token:read', 'token:write' or 'token:admin'"
                )
            self.tokens[token] = scope  # type: ignore[assignment]
        self._digests = [
            (_digest(token.encode("utf-8", "surrogateescape")), scope) for token, scope in self.tokens.items()
        ]

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def scope_of(self, request: Request) -> Scope_ | None:
        """The scope the request's bearer token grants; None without a known token (and
        always None when auth is disabled: nobody is authenticated then)."""
        header = next((value for name, value in request.headers.raw if name == b"authorization"), b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return None
        presented = _digest(token)
        granted: Scope_ | None = None
        for known, scope in self._digests:  # every one, so the time does not tell which matched
            if hmac.compare_digest(known, presented):
                granted = scope
        return granted

    def require(self, needed: Scope_) -> Callable[[Request], Awaitable[None]]:
        async def check(request: Request) -> None:
            if not self.enabled:
                return
            granted = self.scope_of(request)
            if granted is None:
                raise ApiError(
                    status.HTTP_401_UNAUTHORIZED,
                    "unauthorized",
                    "A valid bearer token is required.",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if SCOPE_RANK[granted] < SCOPE_RANK[needed]:
                raise ApiError(
                    status.HTTP_403_FORBIDDEN,
                    "forbidden",
                    f"This needs the {needed} scope; the token has the {granted} scope.",
                )

        return check
