"""The error answers in every service's OpenAPI document, derived once from what each route
has, so that no service lists them by hand and none is left out: a JSON body can be malformed
(400), too large (413) or invalid (422); a bearer-token scope gives 401 and, above ``read``,
403; a record named in the path gives 404; a write to one record can conflict (409); a route
that reads its own body refuses other media types (415); every route touching the database
answers 503 with ``Retry-After`` while the database is out. Each comes with the shared error
body (:class:`crm_runtime.http.Problem`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_flat_params
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from starlette.routing import BaseRoute

from .http import SCOPE_RANK, Problem, TokenAuth

SCHEMAS = "#/components/schemas/"
BEARER_SCHEME = "bearerToken"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The runtime's probes (health) read no storage but their own checks, and document those answers
# where they are declared.
SELF_DOCUMENTED_TAG = "operations"
# FastAPI's own 422 describes its {"detail": [...]} body, which these services never send.
FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")

DESCRIPTIONS: dict[int, str] = {
    400: "The body is not valid JSON, or cannot be read (`malformed_json`).",
    401: "No valid bearer token (`unauthorized`; header `WWW-Authenticate: Bearer`).",
    403: "The token's scope is too low for this operation (`forbidden`).",
    404: "The record named in the path does not exist, or the path is unknown (`not_found`).",
    409: "The change conflicts with the record's state: a stale `expected_version`, an illegal "
    "transition, a record that already exists, or a concurrent change (reload and retry).",
    413: "The body is larger than `CRM_MAX_BODY_BYTES`, with or without Content-Length "
    "(`payload_too_large`).",
    415: "The body is in none of the media types listed for it (`unsupported_media_type`).",
    422: "A parameter or the body is invalid; `fields` names each one and why. Unknown query "
    "parameters, integers for dates and control characters in text are rejected too.",
    503: "The database does not answer; retry after the seconds in `Retry-After`.",
}
HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}},
}


def document_error_responses(app: FastAPI) -> None:
    """Make ``app``'s OpenAPI document list, on every operation, the error statuses it can
    answer, each with the shared error body (FastAPI's documented way: override ``openapi``)."""
    generate = app.openapi
    amended: list[dict[str, Any]] = []  # the document last amended (FastAPI caches it)

    def openapi() -> dict[str, Any]:
        document = generate()
        if not amended or amended[0] is not document:
            amend(document, app.routes)
            amended[:] = [document]
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def amend(document: dict[str, Any], routes: Iterable[BaseRoute | RouteContext]) -> None:
    for route in api_routes(routes):
        path_item = document.get("paths", {}).get(route.path_format, {})
        scope = required_scope(route.dependant)
        for method in route.methods or ():
            operation = path_item.get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for status in error_statuses(route, method, scope):
                add_error_response(responses, status)
            operation["responses"] = dict(sorted(responses.items()))
            if scope is not None:
                operation["security"] = [{BEARER_SCHEME: [scope]}]
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(problem_schemas())
    if not _references(document.get("paths", {}), SCHEMAS + FASTAPI_VALIDATION_SCHEMAS[0]):
        for name in FASTAPI_VALIDATION_SCHEMAS:
            schemas.pop(name, None)
    components.setdefault("securitySchemes", {})[BEARER_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from `CRM_API_TOKENS`; the operation names the scope it needs "
        "(`read` < `write` < `admin`, each including those before it).",
    }


def api_routes(routes: Iterable[BaseRoute | RouteContext]) -> Iterator[RouteContext]:
    for route in iter_route_contexts(list(routes)):
        if isinstance(route.original_route, APIRoute) and route.include_in_schema:
            yield route


def error_statuses(route: RouteContext, method: str, scope: str | None) -> set[int]:
    """What the route has decides what it can answer."""
    parses_json = route.body_field is not None
    reads_own_body = "requestBody" in (route.openapi_extra or {})
    names_a_record = "{" in (route.path_format or "")
    statuses: set[int] = set()
    if SELF_DOCUMENTED_TAG not in route.tags:
        statuses |= {422, 503}  # unknown query parameters are refused too; every route reads storage
    if parses_json or reads_own_body or get_flat_params(route.dependant):
        statuses.add(422)
    if parses_json:
        statuses.add(400)
    if parses_json or reads_own_body:
        statuses.add(413)
    if reads_own_body:
        statuses.add(415)
    if names_a_record:
        statuses.add(404)
    # A write to one record (a JSON body, or the record in the path) checks versions and
    # transitions; uploads and batch jobs report per row instead.
    if method in WRITE_METHODS and (parses_json or names_a_record):
        statuses.add(409)
    if scope is not None:
        statuses.add(401)
        if SCOPE_RANK[scope] > SCOPE_RANK["read"]:
            statuses.add(403)  # every token has at least read
    return statuses


def add_error_response(responses: dict[str, Any], status: int) -> None:
    """Add ``status`` with the shared error body; a response the route declared keeps its
    description, and its own content if it has one."""
    response = responses.setdefault(str(status), {})
    if not response.get("description") or _is_fastapi_validation_error(response):
        response["description"] = DESCRIPTIONS[status]
    if "content" not in response or _is_fastapi_validation_error(response):
        response["content"] = {"application/json": {"schema": {"$ref": SCHEMAS + "Problem"}}}
    if status in HEADERS:
        response.setdefault("headers", {}).update(HEADERS[status])


def problem_schemas() -> dict[str, Any]:
    schema = Problem.model_json_schema(ref_template=SCHEMAS + "{model}")
    nested: dict[str, Any] = schema.pop("$defs", {})
    return {**nested, "Problem": schema}


def required_scope(dependant: Dependant) -> str | None:
    """The scope a route's ``TokenAuth.require`` dependency asks for, if it has one."""
    for dependency in dependant.dependencies:
        scope = _scope_of(dependency.call)
        if scope is None:
            scope = required_scope(dependency)
        if scope is not None:
            return scope
    return None


# Every check ``TokenAuth.require`` returns shares this code; its scope is in its closure.
_CHECK_CODE = TokenAuth(None).require("read").__code__


def _scope_of(call: Callable[..., Any] | None) -> str | None:
    if call is None or getattr(call, "__code__", None) is not _CHECK_CODE:
        return None
    captured = inspect.getclosurevars(call).nonlocals.values()
    return next((value for value in captured if isinstance(value, str) and value in SCOPE_RANK), None)


def _is_fastapi_validation_error(response: Mapping[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref") == SCHEMAS + FASTAPI_VALIDATION_SCHEMAS[0])


def _references(node: Any, ref: str) -> bool:
    if isinstance(node, dict):
        return node.get("$ref") == ref or any(_references(value, ref) for value in node.values())
    if isinstance(node, list):
        return any(_references(value, ref) for value in node)
    return False
