"""The organisation's picklists end to end, leads and reporting as real processes over HTTP and
real Kafka: an administrator adds a lead source with aliases; captures spelling it by an alias
(``lead.captured`` and HTTP) are stored as the canonical value, blank sources as ``unknown``,
an unmatched source is refused (dead letter, 422) naming the closest values, or kept as
``other`` once the list says so; reporting's lead-sources view shows the new source as its own
row under its label; a refused capture replayed from the dead-letter topic once its spelling is
an alias lands there; deactivating and relabelling a source loses no lead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from crm_contracts import catalog
from crm_contracts.events.leads import LeadCaptured, default_picklist_values
from crm_contracts.events.picklists import PicklistName
from crm_leads.domain import lead_id_for
from crm_localinfra.testing import (
    RunningService,
    eventually,
    isolation_key,
    publish_raw,
    read_topic,
    running_services,
    service_env,
)
from crm_runtime.dead_letters import H_ERROR
from crm_runtime.dlq_cli import main as dlq_main
from crm_runtime.events import encode, make_event

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ADMIN = {"id": "admin-1", "name": "Ada Admin"}
TRADE_FAIR = {"value": "trade_fair", "label": "Trade fair", "aliases": ["Messe", "Expo 2026"]}


@dataclass
class Suite:
    infra: Any
    isolation: str
    services: dict[str, RunningService]
    http: httpx.AsyncClient

    def url(self, service: str, path: str) -> str:
        return self.services[service].base_url + path

    def topic(self, name: str) -> str:
        return str(service_env(self.infra, "any", isolation=self.isolation)["topic_prefix"]) + name

    async def call(self, method: str, service: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.request(method, self.url(service, path), **kwargs)

    async def publish(self, external_id: str, **fields: Any) -> None:
        data = LeadCaptured.model_validate(
            {
                "source_system": "marketing-cloud",
                "external_id": external_id,
                "person": {"email": f"{external_id}@example.com"},
                "captured_at": "2026-11-02T09:30:00Z",
                **fields,
            }
        )
        event = make_event(catalog.LEAD_CAPTURED, data, source="/marketing-cloud", subject=external_id)
        await publish_raw(
            self.infra.kafka_bootstrap, self.topic("lead.captured"), encode(event), key=external_id.encode()
        )

    async def lead(self, external_id: str) -> dict[str, Any]:
        """The lead once the leads service has stored it."""
        path = f"/leads/{lead_id_for('marketing-cloud', external_id)}"

        async def stored() -> dict[str, Any] | None:
            response = await self.call("GET", "leads", path)
            return response.json() if response.status_code == 200 else None

        found: dict[str, Any] = await eventually(stored, timeout=60)
        return found

    async def revise(self, values: list[dict[str, Any]], version: int, **settings: Any) -> dict[str, Any]:
        body = {
            "values": values,
            "blank_value": "unknown",
            "expected_version": version,
            "by": ADMIN,
            **settings,
        }
        response = await self.call("PUT", "leads", "/picklists/lead_source", json=body)
        assert response.status_code == 200, response.text
        revised: dict[str, Any] = response.json()
        return revised


@pytest.fixture(scope="module")
async def suite(infra: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Suite]:
    isolation = isolation_key()
    log_dir: Path = tmp_path_factory.mktemp("picklists-e2e")
    async with running_services(
        infra, ["leads", "reporting"], log_dir=log_dir, isolation=isolation
    ) as services:
        async with httpx.AsyncClient(timeout=30) as http:
            yield Suite(infra, isolation, services, http)


def defaults() -> list[dict[str, Any]]:
    return [value.model_dump() for value in default_picklist_values(PicklistName.LEAD_SOURCE)]


async def test_an_organisation_defined_source_folds_its_aliases_and_reports_as_its_own_row(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = (await suite.call("GET", "leads", "/picklists")).json()
    assert [(p["name"], p["version"]) for p in listed] == [("lead_source", 0), ("lead_origin", 0)]
    assert "unknown" in [v["value"] for v in listed[0]["values"]]

    # An administrator adds a source with two aliases; the revision is announced.
    revised = await suite.revise([*defaults(), TRADE_FAIR], 0)
    assert revised["version"] == 1 and revised["values"][-1]["aliases"] == ["Messe", "Expo 2026"]
    announced = await read_topic(
        suite.infra.kafka_bootstrap, suite.topic("picklist.revised"), until=lambda r: len(r) >= 1
    )
    event = announced[0].json()
    assert (event["subject"], event["sequence"], announced[0].key) == ("lead_source", "1", b"lead_source")
    assert event["data"]["values"][-1]["value"] == "trade_fair"

    # Publishers spell it their way; blanks and missing sources are unknown.
    await suite.publish("mc-1", lead_source="MESSE")
    await suite.publish("mc-2", lead_source="expo-2026", origin="Landing Page Form")
    await suite.publish("mc-3", lead_source="  ")
    await suite.publish("mc-4")
    await suite.publish("mc-5", lead_source="Referal")  # matches nothing: refused
    first = await suite.lead("mc-1")
    assert (first["lead_source"], first["lead_source_given"]) == ("trade_fair", "MESSE")
    second = await suite.lead("mc-2")
    assert (second["lead_source"], second["origin"]) == ("trade_fair", "landing_page_form")
    assert (await suite.lead("mc-3"))["lead_source"] == "unknown"
    assert (await suite.lead("mc-4"))["lead_source"] == "unknown"

    parked = await read_topic(
        suite.infra.kafka_bootstrap, suite.topic("lead.captured.dlq"), until=lambda r: len(r) >= 1, timeout=60
    )
    assert [record.headers[H_ERROR].decode() for record in parked] == [
        "lead_source: 'Referal' is not a value of the lead_source picklist; did you mean 'referral'?"
    ]
    created = await read_topic(
        suite.infra.kafka_bootstrap, suite.topic("lead.created"), until=lambda r: len(r) >= 4, timeout=60
    )
    assert sorted(r.json()["data"]["lead"]["lead_source"] for r in created) == [
        "trade_fair",
        "trade_fair",
        "unknown",
        "unknown",
    ]

    # Over HTTP the same rules: an alias is folded, an unmatched value is a 422 naming the field.
    posted = await suite.call(
        "POST", "leads", "/leads", json={"person": {"last_name": "Byron"}, "lead_source": "messe"}
    )
    assert posted.status_code == 201 and posted.json()["lead_source"] == "trade_fair", posted.text
    refused = await suite.call(
        "POST", "leads", "/leads", json={"person": {"last_name": "Babbage"}, "lead_source": "carrier pigeon"}
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["fields"][0]["field"] == "lead_source"
    assert "'carrier pigeon' is not a value of the lead_source picklist" in refused.json()["message"]
    listed_leads = (await suite.call("GET", "leads", "/leads?lead_source=trade_fair")).json()["items"]
    assert len(listed_leads) == 3

    # Reporting groups by the canonical value, the new source under its label.
    async def sources() -> dict[str, dict[str, Any]] | None:
        rows = (await suite.call("GET", "reporting", "/reports/lead-sources")).json()["rows"]
        by_source = {row["lead_source"]: row for row in rows}
        if (
            by_source.get("trade_fair", {}).get("leads") == 3
            and by_source.get("unknown", {}).get("leads") == 2
        ):
            return by_source
        return None

    rows = await eventually(sources, timeout=60)
    assert set(rows) == {"trade_fair", "unknown"}
    assert (rows["trade_fair"]["label"], rows["unknown"]["label"]) == ("Trade fair", "Unknown")

    # The refused capture is not lost: once the spelling is an alias, replaying files it there.
    with_alias = [v | {"aliases": ["Referal"]} if v["value"] == "referral" else v for v in defaults()]
    await suite.revise([*with_alias, TRADE_FAIR], 1)
    for key, value in service_env(suite.infra, "leads", isolation=suite.isolation).items():
        monkeypatch.setenv(f"CRM_{key.upper()}", str(value))
    assert await asyncio.to_thread(dlq_main, ["replay", "lead.captured"]) == 0  # the CLI runs its own loop
    replayed = await suite.lead("mc-5")
    assert (replayed["lead_source"], replayed["lead_source_given"]) == ("referral", "Referal")

    # Retire and relabel it: the leads keep it, reports show the new label, new captures are refused.
    retired = {**TRADE_FAIR, "label": "Trade fair (until 2026)", "active": False}
    await suite.revise([*with_alias, retired], 2)
    assert (await suite.lead("mc-1"))["lead_source"] == "trade_fair"
    late = await suite.call(
        "POST", "leads", "/leads", json={"person": {"last_name": "Somerville"}, "lead_source": "Messe"}
    )
    assert late.status_code == 422 and "no longer in use" in late.json()["message"], late.text

    async def relabelled() -> bool:
        rows = (await suite.call("GET", "reporting", "/reports/lead-sources")).json()["rows"]
        return any(r["lead_source"] == "trade_fair" and r["label"] == "Trade fair (until 2026)" for r in rows)

    await eventually(relabelled, timeout=60)

    # With unknown_values "other" an unmatched value is kept as other, the spelling beside it.
    await suite.revise([*with_alias, retired], 3, unknown_values="other")
    await suite.publish("mc-6", lead_source="Carrier Pigeon")
    kept = await suite.lead("mc-6")
    assert (kept["lead_source"], kept["lead_source_given"]) == ("other", "Carrier Pigeon")


async def test_a_revision_that_drops_a_value_or_is_stale_is_refused(suite: Suite) -> None:
    current = (await suite.call("GET", "leads", "/picklists/lead_origin")).json()
    without_manual = [v for v in current["values"] if v["value"] != "manual"]
    body = {"values": without_manual, "blank_value": "api", "by": ADMIN}
    dropped = await suite.call("PUT", "leads", "/picklists/lead_origin", json=body)
    assert dropped.status_code == 422, dropped.text
    assert dropped.json()["fields"] == [
        {
            "field": "values",
            "reason": "values: manual cannot be removed (leads may hold them); set active to false instead",
        }
    ]
    stale = await suite.call(
        "PUT",
        "leads",
        "/picklists/lead_origin",
        json={**body, "values": current["values"], "expected_version": 3},
    )
    assert stale.status_code == 409 and stale.json()["fields"][0]["field"] == "expected_version", stale.text
    unknown_list = await suite.call("GET", "leads", "/picklists/industries")
    assert unknown_list.status_code == 422, unknown_list.text
