"""Input the campaigns API refuses before anything is read or stored, with a 422 naming the
field: dates given as numbers (epoch seconds or days) and control characters in text. No I/O:
the app is built, not started, so a request that got past validation would fail here for want
of a database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from crm_campaigns.bootstrap import CampaignsSettings, create_app

ISO_DATE = "must be an ISO 8601 date, e.g. 2026-03-05"
REP = {"id": "rep-7"}
NEW = {"name": "Autumn webinar", "type": "webinar", "by": REP}


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(CampaignsSettings(log_level="WARNING"))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://campaigns"
    ) as client:
        yield client


def fields(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {problem["field"]: problem["reason"] for problem in response.json()["fields"]}


@pytest.mark.parametrize("day", [1700000000, 0, 86400, "1700000000", 20261001])
async def test_campaign_dates_given_as_numbers_are_refused(http: httpx.AsyncClient, day: Any) -> None:
    assert fields(await http.post("/campaigns", json=NEW | {"start_date": day})) == {"start_date": ISO_DATE}
    change = {"end_date": day, "by": REP}
    assert fields(await http.patch("/campaigns/c-1", json=change)) == {"end_date": ISO_DATE}
    cost = {"amount": "100.00", "currency": "EUR", "incurred_on": day, "by": REP}
    assert fields(await http.post("/campaigns/c-1/costs", json=cost)) == {"incurred_on": ISO_DATE}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/campaigns", NEW | {"name": "Autumn\x00webinar"}, "name"),
        ("/campaigns", NEW | {"name": "Autumn\nwebinar"}, "name"),
        ("/campaigns", NEW | {"by": {"id": "rep-7", "name": "Grace\x1b"}}, "by.name"),
        ("/campaigns/c-1", {"name": "x\x7f", "by": REP}, "name"),
        ("/campaigns/c-1/status", {"status": "active", "reason": "go\x00", "by": REP}, "reason"),
        (
            "/campaigns/c-1/costs",
            {"amount": "1.00", "currency": "EUR", "incurred_on": "2026-10-01", "note": "a\x00", "by": REP},
            "note",
        ),
    ],
)
async def test_control_characters_in_text_are_refused_naming_the_field(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], field: str
) -> None:
    send = http.patch if path == "/campaigns/c-1" else http.post
    reasons = fields(await send(path, json=body))
    assert list(reasons) == [field] and "U+" in reasons[field]
