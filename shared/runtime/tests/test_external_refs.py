"""A lookup by another system's id takes the system and the id together: one without the other
is a 422 naming the missing one (it would otherwise find whichever system's record has that id);
both, or neither, pass."""

from __future__ import annotations

from typing import Any

import pytest
from crm_localinfra._proc import free_port
from crm_runtime import ServiceRuntime, ServiceSettings
from crm_runtime.external_refs import ByExternalReference
from fastapi import APIRouter, FastAPI
from http_probe import client


@pytest.fixture(scope="module")
def app() -> FastAPI:
    settings = ServiceSettings(
        service_name="lookup-probe",
        mongo_url=f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        log_level="WARNING",
    )
    runtime = ServiceRuntime(settings)
    router = APIRouter()

    @router.get("/records")
    async def records(reference: ByExternalReference = None) -> dict[str, Any]:
        return {"reference": None if reference is None else [reference.system, reference.external_id]}

    return runtime.create_app(title="probe", description="lookup probe", routers=[router])


async def test_system_and_id_together_name_one_record_key(app: FastAPI) -> None:
    async with client(app) as http:
        both = await http.get("/records", params={"external_system": "crm-north", "external_id": "A 1"})
        neither = await http.get("/records")
    assert both.json() == {"reference": ["crm-north", "A 1"]}
    assert neither.json() == {"reference": None}


@pytest.mark.parametrize(
    ("given", "missing"),
    [({"external_id": "A-1"}, "external_system"), ({"external_system": "crm-north"}, "external_id")],
)
async def test_one_without_the_other_is_refused_naming_the_missing_one(
    app: FastAPI, given: dict[str, str], missing: str
) -> None:
    async with client(app) as http:
        answer = await http.get("/records", params=given)
    assert answer.status_code == 422, answer.text
    other = ({"external_system", "external_id"} - {missing}).pop()
    reason = f"required together with {other}"
    assert answer.json() == {
        "error": "validation_failed",
        "message": f"{missing}: {reason}",
        "fields": [{"field": missing, "reason": f"{missing}: {reason}"}],
    }


async def test_the_pair_is_documented_as_query_parameters(app: FastAPI) -> None:
    parameters = app.openapi()["paths"]["/records"]["get"]["parameters"]
    assert {p["name"] for p in parameters} == {"external_system", "external_id"}
    assert all("both or neither" in p["description"].lower() for p in parameters)
