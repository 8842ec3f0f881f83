"""Input the leads API refuses before anything is read or stored, each with a 422 (or a rejected
import row) that names the field: epoch numbers as times, control characters in text, and a
lead without a name, e-mail, phone or company. No I/O: the app is built, not started, so a
request that got past validation would fail here for want of a database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from crm_contracts.events.leads import IDENTIFYING_FIELDS, LeadCaptured, lead_captured_example
from crm_leads.bootstrap import LeadsSettings, create_app
from crm_leads.imports import captured_from
from crm_runtime.chunking import UploadChunker
from crm_runtime.imports import ImportRow, Rejection, rejections_of
from pydantic import ValidationError

ISO_TIME = "must be an ISO 8601 date-time with a time zone, e.g. 2026-03-05T09:30:00Z"
CAPTURES = ("/leads", "/leads/capture")


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(LeadsSettings(log_level="WARNING"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://leads") as client:
        yield client


def fields(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {problem["field"]: problem["reason"] for problem in response.json()["fields"]}


@pytest.mark.parametrize("path", CAPTURES)
@pytest.mark.parametrize("captured_at", [1700000000, 1700000000.25, "1700000000"])
async def test_a_capture_time_given_as_a_number_is_refused(
    http: httpx.AsyncClient, path: str, captured_at: Any
) -> None:
    response = await http.post(path, json=lead_captured_example() | {"captured_at": captured_at})
    assert fields(response) == {"captured_at": ISO_TIME}


@pytest.mark.parametrize("value", ["1700000000", "0"])
async def test_a_time_filter_given_as_a_number_is_refused(http: httpx.AsyncClient, value: str) -> None:
    for parameter in ("captured_from", "captured_to"):
        assert fields(await http.get("/leads", params={parameter: value})) == {parameter: ISO_TIME}


@pytest.mark.parametrize("path", CAPTURES)
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"person": {"first_name": "Ada\x00", "email": "ada@engines.example"}}, "person.first_name"),
        ({"person": {"last_name": "Love\x1b[2Jlace"}}, "person.last_name"),
        ({"company": {"name": "Engines\nLtd"}}, "company.name"),
        ({"source_detail": "fair\x7f"}, "source_detail"),
        ({"custom": {"message": "hello\x00"}}, "custom.message"),
    ],
)
async def test_control_characters_in_text_are_refused_naming_the_field(
    http: httpx.AsyncClient, path: str, change: dict[str, Any], field: str
) -> None:
    reasons = fields(await http.post(path, json=lead_captured_example() | change))
    assert list(reasons) == [field]
    assert "U+" in reasons[field]


async def test_control_characters_are_refused_in_search_and_notes(http: httpx.AsyncClient) -> None:
    assert list(fields(await http.get("/leads", params={"q": "ada\x00"}))) == ["q"]
    note = {"status": "working", "by": {"id": "rep-1"}, "note": "called\x00"}
    assert list(fields(await http.post("/leads/lead-1/status", json=note))) == ["note"]
    reason = {"reason": "no\tbudget", "by": {"id": "rep-1"}}
    assert list(fields(await http.post("/leads/lead-1/disqualify", json=reason))) == ["reason"]
    rep = {"status": "working", "by": {"id": "rep-1", "name": "Rita\x00"}}
    assert list(fields(await http.post("/leads/lead-1/status", json=rep))) == ["by.name"]


@pytest.mark.parametrize("path", CAPTURES)
@pytest.mark.parametrize(
    "anonymous",
    [
        {"person": {}, "company": {}},
        {"person": {"first_name": " ", "job_title": "CTO"}, "company": {"website": "https://x.example"}},
    ],
)
async def test_a_lead_without_name_email_phone_or_company_is_refused_naming_those_fields(
    http: httpx.AsyncClient, path: str, anonymous: dict[str, Any]
) -> None:
    reasons = fields(await http.post(path, json=lead_captured_example() | anonymous))
    assert list(reasons) == list(IDENTIFYING_FIELDS)
    assert set(reasons.values()) == {
        "a lead needs a name, an e-mail, a phone or a company name; none is given"
    }


def _import_rejections(body: bytes, content_type: str) -> list[list[Rejection]]:
    """Each row's rejections as the leads import job finds them: the same chunker and the same
    row check (``captured_from``) before anything is written."""
    chunker = UploadChunker(content_type)
    records = [record for chunk in chunker.feed(body) + chunker.finish() for record in chunk]
    found = []
    for record in records:
        assert record.fields is not None, record
        row = ImportRow(record.number, record.fields)
        try:
            captured_from(row.fields, "list-import")
        except ValidationError as exc:
            found.append(rejections_of(row, exc))
        else:
            found.append([])
    return found


def test_import_rows_with_number_times_control_characters_or_no_identity_are_rejected_alone() -> None:
    ndjson = b"\n".join(
        [
            b'{"external_id": "r1", "captured_at": 1700000000, "person": {"first_name": "Ada"}}',
            b'{"external_id": "r2", "captured_at": "2026-01-01T00:00:00Z",'
            b' "person": {"first_name": "A\\u0000da"}}',
            b'{"external_id": "r3", "captured_at": "2026-01-01T00:00:00Z", "company": {"size": 40}}',
        ]
    )
    r1, r2, r3 = _import_rejections(ndjson, "application/x-ndjson")
    assert [(r.column, r.reason) for r in r1] == [("captured_at", ISO_TIME)]
    assert [r.column for r in r2] == ["person.first_name"] and "U+0000" in r2[0].reason
    assert [r.column for r in r3] == list(IDENTIFYING_FIELDS)

    csv = b'external_id,captured_at,person.first_name\nc1,1700000000,Ada\nc2,2026-01-01T00:00:00Z,"Ada\x07"\n'
    c1, c2 = _import_rejections(csv, "text/csv")
    assert [(r.column, r.reason) for r in c1] == [("captured_at", ISO_TIME)]
    assert [r.column for r in c2] == ["person.first_name"]


@pytest.mark.parametrize("path", CAPTURES)
@pytest.mark.parametrize("counter", ["visits", "time_on_site_seconds", "page_views"])
async def test_engagement_counters_beyond_what_the_database_holds_are_refused(
    http: httpx.AsyncClient, path: str, counter: str
) -> None:
    # Found by the OpenAPI fuzz: a 22-digit visit count reached MongoDB (64-bit ints) as a 500.
    response = await http.post(path, json=lead_captured_example() | {"engagement": {counter: 10**21}})
    assert fields(response) == {f"engagement.{counter}": "Input should be less than or equal to 1000000000"}


LONGEST_EXTERNAL_ID = "x" * 128
TOO_LONG = "String should have at most 128 characters"


@pytest.mark.parametrize("path", CAPTURES)
async def test_an_external_id_has_one_limit_over_http_refused_with_a_field_error(
    http: httpx.AsyncClient, path: str
) -> None:
    response = await http.post(
        path, json=lead_captured_example() | {"external_id": LONGEST_EXTERNAL_ID + "x"}
    )
    assert fields(response) == {"external_id": TOO_LONG}


def test_an_external_id_has_the_same_limit_on_lead_captured_and_in_imports() -> None:
    from crm_contracts import catalog
    from crm_runtime.events import decode, encode, make_event

    accepted = LeadCaptured.model_validate(lead_captured_example() | {"external_id": LONGEST_EXTERNAL_ID})
    event = make_event(catalog.LEAD_CAPTURED, accepted, source="/webforms", subject="s")
    assert decode(catalog.LEAD_CAPTURED, encode(event)).data.external_id == LONGEST_EXTERNAL_ID
    with pytest.raises(ValidationError, match=TOO_LONG):
        LeadCaptured.model_validate(lead_captured_example() | {"external_id": LONGEST_EXTERNAL_ID + "x"})
    ndjson = b'{"external_id": "' + b"x" * 129 + b'", "person": {"first_name": "Ada"}}'
    [rejections] = _import_rejections(ndjson, "application/x-ndjson")
    assert [(r.column, r.reason) for r in rejections] == [("external_id", TOO_LONG)]
