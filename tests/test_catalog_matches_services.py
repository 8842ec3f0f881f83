"""The catalogue (and so the AsyncAPI document) says which service consumes which topic; each
service's registered Kafka handlers must say the same, so the docs never lie."""

from __future__ import annotations

import importlib

import pytest
from crm_contracts.catalog import ALL_EVENTS

SERVICES = ["leads", "opportunities", "campaigns", "reporting"]


@pytest.mark.parametrize("service", SERVICES)
def test_registered_handlers_match_the_catalogue(service: str) -> None:
    bootstrap = importlib.import_module(f"crm_{service}.bootstrap")
    app = bootstrap.create_app()
    registered = set(app.state.runtime.consumer.routes)
    documented = {spec.topic for spec in ALL_EVENTS if service in spec.consumers}
    assert registered == documented


@pytest.mark.parametrize("service", SERVICES)
def test_every_route_is_documented_in_openapi(service: str) -> None:
    bootstrap = importlib.import_module(f"crm_{service}.bootstrap")
    schema = bootstrap.create_app().openapi()
    assert schema["paths"]["/health/ready"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
