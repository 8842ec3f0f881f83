"""Input the opportunities API refuses before anything is read or stored, with a 422 (or a
failed import row) naming the field: dates and times given as numbers, and control characters
in text. No I/O: the app is built, not started, so a request that got past validation would
fail here for want of a database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from crm_opportunities.bootstrap import OpportunitiesSettings, create_app
from crm_opportunities.imports import ContactRow
from crm_opportunities.opportunity_rows import OpportunityRow
from crm_runtime.chunking import UploadChunker
from crm_runtime.imports import ImportRow, rejections_of
from pydantic import ValidationError

ISO_DATE = "must be an ISO 8601 date, e.g. 2026-03-05"
ISO_TIME = "must be an ISO 8601 date-time with a time zone, e.g. 2026-03-05T09:30:00Z"
REP = {"id": "rep-1"}
OPPORTUNITY = {"name": "50 seats", "account_id": "acc-1", "amount": "1200.00", "by": REP}


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(OpportunitiesSettings(log_level="WARNING"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://opportunities") as client:
        yield client


def fields(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {problem["field"]: problem["reason"] for problem in response.json()["fields"]}


@pytest.mark.parametrize("number", [1700000000, 0, 86400, "1700000000"])
async def test_dates_and_times_given_as_numbers_are_refused(http: httpx.AsyncClient, number: Any) -> None:
    close = await http.post("/opportunities", json=OPPORTUNITY | {"expected_close_date": number})
    assert fields(close) == {"expected_close_date": ISO_DATE}
    created = await http.post("/opportunities", json=OPPORTUNITY | {"created_at": number})
    assert fields(created) == {"created_at": ISO_TIME}
    patch = await http.patch("/opportunities/o-1", json={"expected_close_date": number, "by": REP})
    assert fields(patch) == {"expected_close_date": ISO_DATE}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/accounts", {"name": "Analytical\x00Engines"}, "name"),
        ("/accounts", {"name": "Engines", "industry": "Soft\nware"}, "industry"),
        ("/accounts", {"name": "Engines", "address": {"city": "Lon\x7fdon"}}, "address.city"),
        ("/contacts", {"first_name": "Ada\x00"}, "first_name"),
        ("/contacts", {"last_name": "Lovelace", "role": "buyer\x1b"}, "role"),
        ("/opportunities", OPPORTUNITY | {"name": "50\tseats"}, "name"),
        ("/products", {"name": "Seat", "list_price": "10.00", "description": "x\x00"}, "description"),
        ("/sales-teams", {"name": "DACH", "region": "Central\x85Europe"}, "region"),
    ],
)
async def test_control_characters_in_text_are_refused_naming_the_field(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], field: str
) -> None:
    reasons = fields(await http.post(path, json=body))
    assert list(reasons) == [field] and "U+" in reasons[field]


async def test_a_control_character_in_a_text_filter_is_refused(http: httpx.AsyncClient) -> None:
    assert list(fields(await http.get("/sales-teams", params={"region": "DACH\x00"}))) == ["region"]


def test_opportunity_import_rows_with_number_dates_or_control_characters_are_rejected_alone() -> None:
    # As the opportunities import job reads and checks each row before anything is written.
    ndjson = b"\n".join(
        [
            b'{"external_id": "o1", "name": "Deal", "account_id": "acc-1", "expected_close_date": 20270331}',
            b'{"external_id": "o2", "name": "Deal", "account_id": "acc-1", "created_at": 1700000000}',
            b'{"external_id": "o3", "name": "De\\u0000al", "account_id": "acc-1"}',
            b'{"external_id": "o4", "name": "Deal", "account_id": "acc-1",'
            b' "stage_history": [{"stage_id": "prospecting", "entered_at": "1700000000"}]}',
        ]
    )
    chunker = UploadChunker("application/x-ndjson")
    records = [record for chunk in chunker.feed(ndjson) + chunker.finish() for record in chunk]
    found = []
    for record in records:
        assert record.fields is not None, record
        row = ImportRow(record.number, record.fields)
        with pytest.raises(ValidationError) as err:
            OpportunityRow.model_validate(row.fields)
        found.append(rejections_of(row, err.value))
    o1, o2, o3, o4 = found
    assert [(r.column, r.reason) for r in o1] == [("expected_close_date", ISO_DATE)]
    assert [(r.column, r.reason) for r in o2] == [("created_at", ISO_TIME)]
    assert [r.column for r in o3] == ["name"]
    assert [(r.column, r.reason) for r in o4] == [("stage_history.0.entered_at", ISO_TIME)]


def test_contact_import_rows_with_number_times_or_control_characters_are_rejected_alone() -> None:
    """As the contacts import job finds them: the same chunker and row model, before anything
    is written."""
    csv = b'external_id,first_name,created_at\nc1,Ada,1700000000\nc2,"Ada\x00",\nc3,Ada,\n'
    chunker = UploadChunker("text/csv")
    found = []
    for record in [record for chunk in chunker.feed(csv) + chunker.finish() for record in chunk]:
        assert record.fields is not None, record
        try:
            ContactRow.model_validate(record.fields)
        except ValidationError as exc:
            found.append(rejections_of(ImportRow(record.number, record.fields), exc))
        else:
            found.append([])
    c1, c2, c3 = found
    assert [(r.column, r.reason) for r in c1] == [("created_at", ISO_TIME)]
    assert [r.column for r in c2] == ["first_name"]
    assert c3 == []


@pytest.mark.parametrize(
    ("owner_id", "reason"),
    [
        ("$ne", "an id must not start with $"),
        ("rep/1", "an id must not contain /"),
        ("rep\x001", "an id must not contain control characters (found U+0000)"),
        ("rep\u00851", "an id must not contain control characters (found U+0085)"),
        ("..", "an id must not be . or .."),
        ("r" * 129, "String should have at most 128 characters"),
    ],
)
async def test_ids_that_are_operators_paths_or_control_characters_are_refused_naming_the_field(
    http: httpx.AsyncClient, owner_id: str, reason: str
) -> None:
    assert fields(await http.post("/opportunities", json=OPPORTUNITY | {"owner_id": owner_id})) == {
        "owner_id": reason
    }
    assert fields(await http.get("/opportunities", params={"owner_id": owner_id})) == {"owner_id": reason}


async def test_an_id_in_the_path_keeps_its_spaces_but_not_spaces_at_its_ends(http: httpx.AsyncClient) -> None:
    assert fields(await http.get("/products/%20Widget%20Pro")) == {
        "product_id": "an id must not start or end with a space"
    }
    assert fields(await http.get("/products/%24where")) == {"product_id": "an id must not start with $"}


def test_the_id_rule_is_in_the_openapi_field_descriptions() -> None:
    document = create_app(OpportunitiesSettings(log_level="WARNING")).openapi()
    owner = document["components"]["schemas"]["NewOpportunityBody"]["properties"]["owner_id"]
    [text, _] = owner["anyOf"]
    assert text["maxLength"] == 128 and "printable text, spaces inside allowed" in text["description"]
    [product] = [
        p for p in document["paths"]["/products/{product_id}"]["get"]["parameters"] if p["in"] == "path"
    ]
    assert "not starting with $" in product["schema"]["description"]
