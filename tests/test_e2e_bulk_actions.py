"""End to end, the daily work of a migration in a few requests: the leads and opportunities
services as real processes over HTTP and real Kafka. Fifty captured leads are qualified and
converted with one bulk request each (one rejected item among them: an unknown id); the
fifty opportunities appear downstream from the lead.converted events; then one bulk request
gives them to reps, and one closes forty as won and ten as lost (the lost ones with their
reason), which the deals and the accounts show."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from crm_contracts.events.leads import lead_captured_example
from crm_localinfra.testing import RunningService, eventually, isolation_key, running_services

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

REP = {"id": "rep-1", "name": "Rita Rep"}
LEADS = 50


@dataclass
class Suite:
    services: dict[str, RunningService]
    http: httpx.AsyncClient

    async def post(self, service: str, path: str, body: dict[str, Any]) -> Any:
        response = await self.http.post(self.services[service].base_url + path, json=body)
        assert response.status_code in (200, 201), f"POST {path}: {response.status_code} {response.text}"
        return response.json()

    async def get(self, service: str, path: str, **params: Any) -> Any:
        response = await self.http.get(self.services[service].base_url + path, params=params)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        return response.json()


@pytest.fixture(scope="module")
async def suite(infra: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Suite]:
    log_dir: Path = tmp_path_factory.mktemp("bulk-actions-logs")
    async with running_services(
        infra, ["leads", "opportunities"], log_dir=log_dir, isolation=isolation_key()
    ) as services:
        async with httpx.AsyncClient(timeout=60) as http:
            yield Suite(services, http)


def lead(n: int) -> dict[str, Any]:
    return lead_captured_example() | {
        "external_id": f"migrated-{n}",
        "person": {"first_name": f"Lead{n}", "last_name": "Buyer", "email": f"buyer{n}@co{n}.example"},
        "company": {"name": f"Company {n}", "website": f"https://co{n}.example"},
    }


async def test_fifty_leads_qualified_converted_assigned_and_closed_in_four_bulk_requests(
    suite: Suite,
) -> None:
    ids = [(await suite.post("leads", "/leads/capture", lead(n)))["id"] for n in range(LEADS)]

    qualified = await suite.post(
        "leads", "/leads/bulk/qualify", {"by": REP, "items": [{"id": i} for i in [*ids, "no-such-lead"]]}
    )
    assert (qualified["applied"], qualified["rejected"]) == (LEADS, 1)
    assert qualified["results"][-1]["error"]["field"] == "id"

    items = [{"id": i, "opportunity": {"name": f"Deal {n}", "amount": "1000.00"}} for n, i in enumerate(ids)]
    converted = await suite.post("leads", "/leads/bulk/convert", {"by": REP, "items": items})
    assert converted["applied"] == LEADS
    opportunity_ids = {(await suite.get("leads", f"/leads/{i}"))["conversion"]["opportunity_id"] for i in ids}
    assert len(opportunity_ids) == LEADS

    async def all_opened() -> list[dict[str, Any]] | None:
        page = await suite.get("opportunities", "/opportunities", limit=500)
        opened = [o for o in page["items"] if o["id"] in opportunity_ids]
        return opened if len(opened) == LEADS else None

    opened = await eventually(all_opened, timeout=90)
    assert {o["lead_id"] for o in opened} == set(ids)

    deals = sorted(opportunity_ids)
    owners = await suite.post(
        "opportunities",
        "/opportunities/bulk/assign-owner",
        {"by": REP, "items": [{"id": d, "owner_id": f"rep-{n % 3}"} for n, d in enumerate(deals)]},
    )
    assert owners["applied"] == LEADS
    moves = [
        {"id": d, "stage_id": "closed_won"}
        if n < 40
        else {"id": d, "stage_id": "closed_lost", "loss_reason": "price"}
        for n, d in enumerate(deals)
    ]
    closed = await suite.post("opportunities", "/opportunities/bulk/move-stage", {"by": REP, "items": moves})
    assert (closed["applied"], closed["rejected"]) == (LEADS, 0)

    won = await suite.get("opportunities", "/opportunities", status="won", limit=500)
    lost = await suite.get("opportunities", "/opportunities", status="lost", limit=500)
    assert {o["id"] for o in won["items"]} == set(deals[:40])
    assert {o["loss_reason"] for o in lost["items"]} == {"price"} and len(lost["items"]) == 10
    assert {o["owner_id"] for o in won["items"]} == {"rep-0", "rep-1", "rep-2"}
    account = await suite.get("opportunities", f"/accounts/{won['items'][0]['account_id']}")
    assert account["type"] == "customer"
