"""HTTP conventions every service shares: errors that name the field and the reason, a body
size limit, and bearer-token scopes (read for BI tools, write for systems and reps)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Scope_ = Literal["read", "write", "admin"]
# Each scope includes those before it: admin (configuration: scoring rules, pipelines,
# products, sales teams) may also write, and write (the day-to-day work) may also read.
SCOPE_RANK: dict[str, int] = {"read": 0, "write": 1, "admin": 2}


class FieldProblem(BaseModel):
    field: str
    reason: str


class Problem(BaseModel):
    """Error body of every 4xx answer."""

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


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(ApiError, _api_error_handler)


class BodySizeLimit:
    """Refuses bodies over ``max_bytes`` with 413 before anything is parsed or stored. The
    ``large_paths`` (streamed imports) have their own, larger ``large_max_bytes``."""

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

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
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
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class TokenAuth:
    """Bearer tokens with a scope; ``admin`` implies ``write``, which implies ``read``. No
    tokens configured = open (local development), which the service logs loudly at start."""

    def __init__(self, spec: str | None) -> None:
        self.tokens: dict[str, Scope_] = {}
        for pair in (spec or "").split(","):
            if not pair.strip():
                continue
            token, _, scope = pair.strip().partition(":")
            if scope not in SCOPE_RANK:
                raise ValueError(
                    "CRM_API_TOKENS entries must be 'token:read', 'token:write' or 'token:admin'"
                )
            self.tokens[token] = scope  # type: ignore[assignment]

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def require(self, needed: Scope_) -> Callable[[Request], Awaitable[None]]:
        async def check(request: Request) -> None:
            if not self.enabled:
                return
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            granted = next(
                (scope for known, scope in self.tokens.items() if hmac.compare_digest(known, token)),
                None,
            )
            if scheme.lower() != "bearer" or granted is None:
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
