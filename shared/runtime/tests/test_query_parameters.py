"""Query parameters an operation does not take are refused with 422 naming them, never ignored;
a one-value parameter given twice too. Declared ones pass, wherever they are declared (the
route, one of its dependencies, a query model) and under their alias."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from http_probe import client, probe


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return probe(tokens=None)[0]


def refused(answer: Any, field: str, reason: str) -> None:
    assert answer.status_code == 422, answer.text
    assert answer.json() == {
        "error": "validation_failed",
        "message": f"{field}: {reason}",
        "fields": [{"field": field, "reason": reason}],
    }


async def test_an_unknown_query_parameter_is_refused_naming_it_and_what_is_taken(app: FastAPI) -> None:
    async with client(app) as http:
        answer = await http.get("/notes", params={"q": "ada", "tga": "vip"})
    refused(answer, "tga", "unknown query parameter (this operation takes: from, q, region, tag)")


async def test_declared_parameters_pass_from_the_route_its_dependencies_and_aliases(app: FastAPI) -> None:
    async with client(app) as http:
        answer = await http.get("/notes?q=ada&tag=a&tag=b&from=2025-01-01&region=emea")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"q": "ada", "tag": ["a", "b"], "from": "2025-01-01", "region": "emea"}


async def test_the_python_name_of_an_aliased_parameter_is_unknown(app: FastAPI) -> None:
    async with client(app) as http:
        answer = await http.get("/notes", params={"day": "2025-01-01"})
    refused(answer, "day", "unknown query parameter (this operation takes: from, q, region, tag)")


async def test_a_one_value_parameter_given_twice_is_refused(app: FastAPI) -> None:
    async with client(app) as http:
        answer = await http.get("/notes?q=ada&q=grace")
    refused(answer, "q", "given 2 times; it takes one value")


async def test_the_fields_of_a_query_model_are_its_parameters(app: FastAPI) -> None:
    async with client(app) as http:
        taken = await http.get("/pages", params={"offset": 5, "size": 2})
        typo = await http.get("/pages", params={"offset": 5, "sise": 2})
    assert taken.status_code == 200 and taken.json() == {"offset": 5, "size": 2}
    refused(typo, "sise", "unknown query parameter (this operation takes: offset, size)")


async def test_every_operation_is_checked_before_it_touches_the_database(app: FastAPI) -> None:
    async with client(app) as http:
        count = await http.get("/notes/count", params={"region": "emea"})
        live = await http.get("/health/live", params={"verbose": "1"})
    refused(count, "region", "unknown query parameter (this operation takes: none)")
    refused(live, "verbose", "unknown query parameter (this operation takes: none)")
