"""The runtime's HTTP conventions hold in each of the four services' real apps (no broker or
database needed: the checks answer before a route touches either): unknown query parameters
are refused on every documented operation, bad bearer tokens get 401, oversized chunked bodies
and uploads 413, unknown routes and wrong methods the shared error body."""

from __future__ import annotations

import importlib
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from crm_localinfra._proc import free_port
from fastapi import FastAPI

SERVICES = ["leads", "opportunities", "campaigns", "reporting"]
ADMIN = {"authorization": "Bearer boss"}
LIMIT = 2048


def service_app(service: str) -> FastAPI:
    bootstrap = importlib.import_module(f"crm_{service}.bootstrap")
    settings_type = getattr(bootstrap, f"{service.capitalize()}Settings")
    settings = settings_type(
        mongo_url=f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
        mongo_server_selection_timeout_ms=200,
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        api_tokens="boss:admin",
        max_body_bytes=LIMIT,
        log_level="WARNING",
    )
    app: FastAPI = bootstrap.create_app(settings)
    return app


@pytest.fixture(scope="module")
def apps() -> dict[str, FastAPI]:
    return {service: service_app(service) for service in SERVICES}


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service")


def operations(app: FastAPI) -> Iterator[tuple[str, str, list[str]]]:
    """(method, path with its parameters filled in, documented query parameters) of each operation."""
    for path, methods in app.openapi()["paths"].items():
        for method, operation in methods.items():
            query = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            yield method.upper(), re.sub(r"\{[^}]+\}", "x1", path), query


@pytest.mark.parametrize("service", SERVICES)
async def test_every_operation_takes_its_documented_query_parameters_and_refuses_others(
    apps: dict[str, FastAPI], service: str
) -> None:
    app = apps[service]
    async with client(app) as http:
        for method, path, documented in operations(app):
            params = dict.fromkeys(documented, "1") | {"unheard_of": "1"}
            answer = await http.request(method, path, params=params, headers=ADMIN)
            assert answer.status_code == 422, (method, path, answer.text)
            assert [f["field"] for f in answer.json()["fields"]] == ["unheard_of"], (
                method,
                path,
                answer.text,
            )


TYPOS = {
    "leads": ("/leads", {"lead_sorce": "web"}),
    "opportunities": ("/opportunities", {"stage": "won"}),
    "campaigns": ("/campaigns", {"typ": "webinar"}),
    "reporting": ("/reports/funnel", {"lead_sorce": "web", "from": "2025-01-01"}),
}


@pytest.mark.parametrize("service", SERVICES)
async def test_a_misspelt_filter_is_refused_naming_it(apps: dict[str, FastAPI], service: str) -> None:
    path, params = TYPOS[service]
    async with client(apps[service]) as http:
        answer = await http.get(path, params=params, headers=ADMIN)
    assert answer.status_code == 422, answer.text
    [problem] = answer.json()["fields"]
    misspelt = next(iter(params))
    assert problem["field"] == misspelt and problem["reason"].startswith("unknown query parameter")


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("header", [b"Bearer \xe9t\xe9", b"Bearer \xc3\xa9t\xc3\xa9", b"Bearer"])
async def test_a_non_ascii_or_empty_bearer_token_gets_401(
    apps: dict[str, FastAPI], service: str, header: bytes
) -> None:
    path, _ = TYPOS[service]
    async with client(apps[service]) as http:
        answer = await http.get(path, headers={"authorization": header})
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"] == "unauthorized"


async def oversized(opening: bytes) -> AsyncIterator[bytes]:
    yield opening
    for _ in range(LIMIT // 256 * 4):
        yield b"x" * 256


BODIES = [
    ("leads", "/leads", "application/json", b'{"source_system": "web", "external_id": "'),
    ("opportunities", "/accounts", "application/json", b'{"name": "'),
    # Import uploads have their own, larger limit (CRM_MAX_IMPORT_BYTES): test_leads_import_jobs.
    ("opportunities", "/products", "application/json", b'{"name": "'),
    ("campaigns", "/campaigns", "application/json", b'{"name": "'),
]


@pytest.mark.parametrize(("service", "path", "content_type", "opening"), BODIES)
async def test_an_oversized_chunked_body_or_upload_gets_413(
    apps: dict[str, FastAPI], service: str, path: str, content_type: str, opening: bytes
) -> None:
    async with client(apps[service]) as http:
        answer = await http.post(
            path, content=oversized(opening), headers={"content-type": content_type, **ADMIN}
        )
    assert "content-length" not in answer.request.headers
    assert answer.status_code == 413, answer.text
    assert answer.json() == {
        "error": "payload_too_large",
        "message": f"The request body exceeds {LIMIT} bytes.",
        "fields": [],
    }


@pytest.mark.parametrize("service", SERVICES)
async def test_unknown_routes_and_wrong_methods_answer_in_the_shared_format(
    apps: dict[str, FastAPI], service: str
) -> None:
    async with client(apps[service]) as http:
        missing = await http.get("/no-such-thing", headers=ADMIN)
        wrong = await http.delete("/health/live", headers=ADMIN)
    assert missing.status_code == 404
    assert missing.json() == {
        "error": "not_found",
        "message": "There is no operation at /no-such-thing; /docs lists them.",
        "fields": [],
    }
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"
    problem: dict[str, Any] = wrong.json()
    assert problem == {
        "error": "method_not_allowed",
        "message": "DELETE is not allowed here; use GET.",
        "fields": [],
    }
