"""The error statuses in the OpenAPI documents come from what each route has, with the shared
error body; schemathesis (tests/test_openapi_fuzz.py) checks them against real answers."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from crm_runtime.health import health_router
from crm_runtime.http import TokenAuth, install_error_handlers
from crm_runtime.openapi import document_error_responses
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from pydantic import BaseModel

UPLOAD = {"requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}}}


class Note(BaseModel):
    text: str


def crm_app() -> FastAPI:
    auth = TokenAuth("r:read,w:write,a:admin")
    read, write, admin = (
        [Depends(auth.require("read"))],
        [Depends(auth.require("write"))],
        [Depends(auth.require("admin"))],
    )
    router = APIRouter()

    @router.get("/notes", dependencies=read)
    async def list_notes(q: Annotated[str | None, Query()] = None) -> list[str]:
        return []

    @router.get("/notes/{note_id}", dependencies=read)
    async def get_note(note_id: str) -> str:
        return note_id

    @router.post("/notes", dependencies=write, responses={201: {"description": "created"}})
    async def add_note(note: Note) -> str:
        return note.text

    @router.post("/notes/{note_id}/archive", dependencies=write)
    async def archive_note(note_id: str) -> str:
        return note_id

    @router.delete("/notes/{note_id}", dependencies=admin)
    async def delete_note(note_id: str) -> None:
        return None

    @router.post("/notes/imports", dependencies=write, openapi_extra=UPLOAD)
    async def import_notes(request: Request) -> int:
        return len(await request.body())

    @router.post("/notes/reindex", dependencies=admin)
    async def reindex(limit: int = 10) -> int:
        return limit

    @router.get("/public", responses={422: {"description": "A filter is invalid; the body names it."}})
    async def public(day: str | None = None) -> str:
        return "ok"

    @router.get("/probe", tags=["operations"], dependencies=admin)
    async def probe(verbose: bool = False) -> str:
        return "ok"

    async def ok() -> None:
        return None

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(health_router({"mongodb": ok}))
    app.include_router(router)
    document_error_responses(app)
    return app


def responses(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    found: dict[str, Any] = document["paths"][path][method]["responses"]
    return found


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("get", "/notes", {200, 401, 422, 503}),
        ("get", "/notes/{note_id}", {200, 401, 404, 422, 503}),
        ("post", "/notes", {200, 201, 400, 401, 403, 409, 413, 422, 503}),
        ("post", "/notes/{note_id}/archive", {200, 401, 403, 404, 409, 422, 503}),
        ("delete", "/notes/{note_id}", {200, 401, 403, 404, 409, 422, 503}),
        ("post", "/notes/imports", {200, 401, 403, 413, 415, 422, 503}),
        ("post", "/notes/reindex", {200, 401, 403, 422, 503}),
        ("get", "/public", {200, 422, 503}),
        ("get", "/health/live", {200}),
        ("get", "/health/ready", {200, 503}),
        ("get", "/probe", {200, 401, 403, 422}),  # a probe: what it has, but no blanket 422/503
    ],
)
def test_each_operation_lists_the_statuses_its_route_can_answer(
    method: str, path: str, statuses: set[int]
) -> None:
    assert {int(status) for status in responses(crm_app().openapi(), method, path)} == statuses


def test_error_answers_carry_the_shared_error_body_and_their_headers() -> None:
    document = crm_app().openapi()
    answers = responses(document, "post", "/notes")
    for status in ("400", "401", "403", "409", "413", "422", "503"):
        assert answers[status]["content"] == {
            "application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        }, status
        assert answers[status]["description"]
    assert "Retry-After" in answers["503"]["headers"]
    assert "WWW-Authenticate" in answers["401"]["headers"]
    schemas = document["components"]["schemas"]
    assert set(schemas["Problem"]["required"]) == {"error", "message"}
    assert schemas["Problem"]["properties"]["fields"]["items"] == {
        "$ref": "#/components/schemas/FieldProblem"
    }
    # FastAPI's {"detail": [...]} body is never sent, so it is not documented either.
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas


def test_responses_a_route_declares_keep_their_description_and_body() -> None:
    document = crm_app().openapi()
    assert (
        responses(document, "get", "/public")["422"]["description"]
        == "A filter is invalid; the body names it."
    )
    assert responses(document, "get", "/public")["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }
    assert responses(document, "post", "/notes")["201"] == {"description": "created"}
    # Readiness answers 503 with its own report, not the error body.
    assert "content" not in responses(document, "get", "/health/ready")["503"]


def test_operations_name_the_bearer_scope_they_need() -> None:
    document = crm_app().openapi()
    paths = document["paths"]
    assert paths["/notes"]["get"]["security"] == [{"bearerToken": ["read"]}]
    assert paths["/notes"]["post"]["security"] == [{"bearerToken": ["write"]}]
    assert paths["/notes/{note_id}"]["delete"]["security"] == [{"bearerToken": ["admin"]}]
    assert "security" not in paths["/public"]["get"]
    assert document["components"]["securitySchemes"]["bearerToken"]["scheme"] == "bearer"


async def test_the_served_document_is_the_amended_one() -> None:
    app = crm_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://crm") as client:
        served = (await client.get("/openapi.json")).json()
        again = (await client.get("/openapi.json")).json()
    assert served == again == app.openapi()
    assert "503" in served["paths"]["/notes"]["get"]["responses"]


@pytest.mark.parametrize("service", ["leads", "opportunities", "campaigns", "reporting"])
def test_every_service_operation_documents_its_errors_with_the_shared_body(service: str) -> None:
    module = __import__(f"crm_{service}.bootstrap", fromlist=["create_app"])
    document = module.create_app().openapi()
    operations = [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if "operations" not in operation.get("tags", [])
    ]
    assert operations
    for method, path, operation in operations:
        answers = operation["responses"]
        assert {"401", "422", "503"} <= set(answers), (method, path)
        for status, answer in answers.items():
            if int(status) >= 400:
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Problem"}, (method, path, status)
