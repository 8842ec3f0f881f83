"""The runtime's HTTP conventions hold in each of the four services' real apps (no broker or
database needed: the checks answer before a route touches either): unknown query parameters
are refused on every documented operation, bad bearer tokens get 401, oversized chunked bodies
and uploads 413, unknown routes and wrong methods the shared error body; /docs and /redoc load
every asset from the service (none from a CDN); each operation documents the bearer scope it
needs, and the service enforces exactly that scope."""

from __future__ import annotations

import asyncio
import importlib
import re
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any

import httpx
import pytest
from crm_localinfra._proc import free_port
from fastapi import FastAPI

SERVICES = ["leads", "opportunities", "campaigns", "reporting"]
ADMIN = {"authorization": "Bearer boss"}
TOKENS = {"read": "analyst", "write": "rep", "admin": "boss"}
LIMIT = 2048


def service_app(service: str) -> FastAPI:
    bootstrap = importlib.import_module(f"crm_{service}.bootstrap")
    settings_type = getattr(bootstrap, f"{service.capitalize()}Settings")
    settings = settings_type(
        mongo_url=f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
        mongo_server_selection_timeout_ms=200,
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        api_tokens=",".join(f"{token}:{scope}" for scope, token in TOKENS.items()),
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


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_api_docs_load_every_asset_from_the_service(
    apps: dict[str, FastAPI], service: str, page: str
) -> None:
    async with client(apps[service]) as http:
        answer = await http.get(page)
        assert answer.status_code == 200
        html = answer.text
        assert "https://" not in html and "http://" not in html and "cdn." not in html, html
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert {a.rsplit(".", 1)[-1] for a in assets} >= ({"js", "css"} if page == "/docs" else {"js"})
        for asset in assets:
            loaded = await http.get(asset)
            assert loaded.status_code == 200 and len(loaded.content) > 1000, asset
        assert (await http.get("/openapi.json")).status_code == 200


SCOPE_BELOW = {"write": "read", "admin": "write"}
# The token check answers before the route runs; a route still working after this (one that
# waits out the absent database, e.g. a job request) got past it.
ADMITTED_AFTER_SECONDS = 15


async def admitted(request: Awaitable[httpx.Response]) -> bool:
    try:
        answer = await asyncio.wait_for(request, ADMITTED_AFTER_SECONDS)
    except TimeoutError:
        return True
    return answer.status_code not in (401, 403)


@pytest.mark.parametrize("service", SERVICES)
async def test_each_operation_documents_the_bearer_scope_the_service_enforces(
    apps: dict[str, FastAPI], service: str
) -> None:
    app = apps[service]
    document = app.openapi()
    scheme = document["components"]["securitySchemes"]["bearerToken"]
    assert scheme == scheme | {"type": "http", "scheme": "bearer"}
    checked = 0
    async with client(app) as http:
        for path, item in document["paths"].items():
            for method, operation in item.items():
                if "operations" in operation.get("tags", []):
                    assert "security" not in operation, (method, path)  # probes answer anyone
                    continue
                [[scheme_name, [scope]]] = [next(iter(s.items())) for s in operation["security"]]
                assert scheme_name == "bearerToken" and scope in TOKENS, (method, path)
                url = re.sub(r"\{[^}]+\}", "x1", path)
                anonymous = await http.request(method.upper(), url)
                assert anonymous.status_code == 401, (method, path, anonymous.text)
                if scope in SCOPE_BELOW:
                    below = {"authorization": f"Bearer {TOKENS[SCOPE_BELOW[scope]]}"}
                    refused = await http.request(method.upper(), url, headers=below)
                    assert refused.status_code == 403, (method, path, refused.text)
                    assert f"needs the {scope} scope" in refused.json()["message"]
                allowed = {"authorization": f"Bearer {TOKENS[scope]}"}
                assert await admitted(http.request(method.upper(), url, headers=allowed)), (method, path)
                checked += 1
    assert checked >= 5
