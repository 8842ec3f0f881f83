"""A lead's website, consent and UTM through conversion, across the four services as real
processes over HTTP and real Kafka: a web form captures the lead with them, a rep qualifies and
converts it, opportunities shows them on the account, contact and opportunity, and reporting's
funnel counts the lead under its UTM source."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from crm_contracts.events.leads import lead_captured_example
from crm_localinfra.testing import RunningService, eventually, isolation_key, running_services

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

REP = {"id": "rep-1", "name": "Rita Rep"}
UTM = {"source": "google", "medium": "cpc", "campaign": "looms-q4", "term": "loom crm", "content": "ad-b"}


@pytest.fixture(scope="module")
async def services(
    infra: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, RunningService]]:
    log_dir: Path = tmp_path_factory.mktemp("e2e-carry-logs")
    names = ["leads", "opportunities", "campaigns", "reporting"]
    async with running_services(infra, names, log_dir=log_dir, isolation=isolation_key()) as running:
        yield running


async def test_a_converted_lead_keeps_its_website_consent_and_utm_everywhere(
    services: dict[str, RunningService],
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:

        async def ok(method: str, service: str, path: str, **kwargs: Any) -> Any:
            response = await http.request(method, services[service].base_url + path, **kwargs)
            assert response.status_code in (200, 201), (
                f"{method} {path}: {response.status_code} {response.text}"
            )
            return response.json()

        captured = lead_captured_example() | {
            "external_id": "utm-1",
            "consent": {"do_not_email": True, "do_not_call": False},
            "utm": UTM,
        }
        lead = await ok("POST", "leads", "/leads", json=captured)
        untracked = await ok(
            "POST", "leads", "/leads", json=lead_captured_example() | {"external_id": "plain-1"}
        )
        assert untracked["id"] != lead["id"]
        await ok("POST", "leads", f"/leads/{lead['id']}/qualify", json={"rating": "hot", "by": REP})
        converted = await ok(
            "POST",
            "leads",
            f"/leads/{lead['id']}/convert",
            json={"by": REP, "opportunity": {"name": "Engines: 40 looms", "amount": "20000.00"}},
        )
        ids = converted["conversion"]

        async def opportunity() -> Any:
            response = await http.get(
                services["opportunities"].base_url + f"/opportunities/{ids['opportunity_id']}"
            )
            return response.json() if response.status_code == 200 else None

        deal = await eventually(opportunity, timeout=60)
        assert deal["utm"] == UTM and deal["lead_source"] == "web"
        account = await ok("GET", "opportunities", f"/accounts/{ids['account_id']}")
        assert (account["website"], account["domain"]) == ("https://engines.example", "engines.example")
        contact = await ok("GET", "opportunities", f"/contacts/{ids['contact_id']}")
        assert contact["consent"] == {
            "do_not_email": True,
            "do_not_call": False,
            "recorded_at": "2026-11-02T09:30:00Z",  # when the form captured it
            "source": f"lead conversion {lead['id']}",
        }

        async def funnel_by_utm_source() -> Any:
            report = await ok("GET", "reporting", "/reports/funnel", params={"group_by": "utm_source"})
            rows = {row["group"]: row for row in report["rows"]}
            done = (
                rows.get("google", {}).get("opportunities") == 1 and rows.get(None, {}).get("captured") == 1
            )
            return rows if done else None

        rows = await eventually(funnel_by_utm_source, timeout=60)
        assert [(g, r["captured"], r["qualified"], r["converted"]) for g, r in rows.items()] == [
            ("google", 1, 1, 1),
            (None, 1, 0, 0),
        ]
        cpc = await ok(
            "GET", "reporting", "/reports/funnel", params={"utm_source": "google", "group_by": "utm_medium"}
        )
        assert [(r["group"], r["converted"], r["opportunities"]) for r in cpc["rows"]] == [("cpc", 1, 1)]
        csv = await http.get(
            services["reporting"].base_url + "/reports/funnel",
            params={"group_by": "utm_campaign", "format": "csv"},
        )
        assert csv.status_code == 200 and "looms-q4" in csv.text
