"""Members by hand over HTTP, against real Kafka and a real MongoDB-compatible server: adding
leads and contacts one by one and in bulk, status changes along the campaign's statuses, the
configuration of which statuses exist and count as a response, and the events all of it emits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
from crm_campaigns.bootstrap import CampaignsSettings, create_app
from crm_campaigns.domain import LeadReference
from crm_campaigns.repository import MemberRepository
from crm_contracts import catalog
from crm_contracts.envelope import utcnow
from crm_localinfra.testing import eventually, isolation_key, read_topic, service_client, service_env
from crm_runtime import ServiceRuntime, UnitOfWork
from crm_runtime.events import decode

pytestmark = pytest.mark.integration

REP = {"id": "rep-7", "name": "Grace"}


@dataclass
class Api:
    http: httpx.AsyncClient
    settings: CampaignsSettings
    bootstrap: str
    runtime: ServiceRuntime

    async def leads(self, *lead_ids: str) -> None:
        """Leads the service has seen, as their lead.created would leave them."""
        references = [LeadReference(lead_id=i, source_system="web", external_id=i) for i in lead_ids]

        async def work(uow: UnitOfWork) -> None:
            await MemberRepository(self.runtime.db).record_leads(references, uow.session)

        await self.runtime.transaction(work)

    async def merged(self, duplicate_id: str, survivor_id: str) -> None:
        """A lead.merged the service has followed."""

        async def work(uow: UnitOfWork) -> None:
            await MemberRepository(self.runtime.db).record_merge(
                duplicate_id, survivor_id, utcnow(), uow.session
            )

        await self.runtime.transaction(work)

    async def campaign(self, **fields: Any) -> str:
        body = {"name": "Autumn webinar", "type": "webinar", "by": REP, **fields}
        created = await self.http.post("/campaigns", json=body)
        assert created.status_code == 201, created.text
        campaign_id: str = created.json()["id"]
        return campaign_id

    async def events(self, topic: str, campaign_id: str, count: int) -> list[Any]:
        """The first ``count`` events of ``topic`` about ``campaign_id``, decoded."""
        spec = catalog.BY_TOPIC[topic]
        records = await read_topic(
            self.bootstrap,
            self.settings.topic(topic),
            until=lambda rs: sum(r.key == campaign_id.encode() for r in rs) >= count,
        )
        return [decode(spec, r.value).data for r in records if r.key == campaign_id.encode()]


@pytest.fixture(scope="module")
async def api(infra: Any) -> AsyncIterator[Api]:
    settings = CampaignsSettings(**service_env(infra, "campaigns", isolation=isolation_key()))
    app = create_app(settings)
    async with service_client(app) as http:
        runtime: ServiceRuntime = app.state.runtime
        yield Api(http, settings, infra.kafka_bootstrap, runtime)

        async def outbox_drained() -> bool:
            return await runtime.outbox.pending() == 0

        await eventually(outbox_drained, timeout=30)


async def test_a_lead_or_contact_is_added_by_hand_once_and_announced(api: Api) -> None:
    campaign_id = await api.campaign()
    members = f"/campaigns/{campaign_id}/members"

    added = await api.http.post(members, json={"contact_id": "con-1", "by": REP})
    assert added.status_code == 201, added.text
    contact = added.json()
    assert (contact["member_id"], contact["member_type"], contact["status"]) == (
        "contact:con-1",
        "contact",
        "sent",
    )
    assert (contact["contact_id"], contact["responded"], contact["version"]) == ("con-1", False, 1)

    await api.leads("lead-1")
    lead = await api.http.post(members, json={"lead_id": "lead-1", "status": "registered", "by": REP})
    assert lead.status_code == 201, lead.text
    assert (lead.json()["status"], lead.json()["responded"], lead.json()["first_touch"]) == (
        "registered",
        True,
        True,
    )
    assert lead.json()["touched_via"] == ["api"]

    again = await api.http.post(members, json={"contact_id": "con-1", "status": "attended", "by": REP})
    assert again.status_code == 200 and again.json() == contact  # a retry changes nothing

    listed = (await api.http.get(members)).json()["items"]
    assert [m["member_id"] for m in listed] == ["contact:con-1", "lead:lead-1"]
    [event_contact, event_lead] = await api.events("campaign.member_added", campaign_id, 2)
    assert (event_contact.member_id, event_contact.contact_id, event_contact.status) == (
        "contact:con-1",
        "con-1",
        "sent",
    )
    assert (event_lead.lead_id, event_lead.added_via, event_lead.status) == ("lead-1", "api", "registered")


@pytest.mark.parametrize(
    ("body", "status_code", "field"),
    [
        ({"by": REP}, 422, "contact_id"),
        ({"lead_id": "lead-1", "contact_id": "con-1", "by": REP}, 422, "contact_id"),
        ({"lead_id": {"$ne": ""}, "by": REP}, 422, "lead_id"),
        ({"lead_id": "lead-1", "status": "bounced", "by": REP}, 422, "status"),
        ({"lead_id": "lead-1", "by": REP, "note": "x"}, 422, "note"),
        ({"lead_id": "lead-1"}, 422, "by"),
    ],
)
async def test_malformed_members_are_refused_naming_the_field(
    api: Api, body: dict[str, Any], status_code: int, field: str
) -> None:
    campaign_id = await api.campaign()
    refused = await api.http.post(f"/campaigns/{campaign_id}/members", json=body)
    assert refused.status_code == status_code, refused.text
    assert [f["field"] for f in refused.json()["fields"]] == [field]
    assert (await api.http.get(f"/campaigns/{campaign_id}/members")).json()["items"] == []


async def test_a_status_the_campaign_does_not_offer_or_an_unknown_campaign_is_refused(api: Api) -> None:
    statuses = [{"status": "sent"}, {"status": "responded", "counts_as_response": True}]
    campaign_id = await api.campaign(member_statuses=statuses)
    await api.leads("lead-1")
    refused = await api.http.post(
        f"/campaigns/{campaign_id}/members", json={"lead_id": "lead-1", "status": "attended", "by": REP}
    )
    assert refused.status_code == 422 and refused.json()["fields"][0]["field"] == "status"
    assert "offers: sent, responded" in refused.json()["message"]
    missing = await api.http.post("/campaigns/no-such/members", json={"lead_id": "lead-1", "by": REP})
    assert missing.status_code == 404 and missing.json()["fields"][0]["field"] == "campaign_id"


async def test_a_lead_never_seen_or_merged_away_is_refused_naming_lead_id(api: Api) -> None:
    campaign_id = await api.campaign()
    members = f"/campaigns/{campaign_id}/members"
    lead = f"{campaign_id[:8]}-lead"
    unknown = await api.http.post(members, json={"lead_id": f"{lead}-ghost", "by": REP})
    assert unknown.status_code == 422, unknown.text
    assert unknown.json()["fields"][0]["field"] == "lead_id"
    assert f"unknown lead {lead}-ghost" in unknown.json()["message"]

    await api.leads(f"{lead}-dup", f"{lead}-keep", f"{lead}-final")
    await api.merged(f"{lead}-dup", f"{lead}-keep")
    await api.merged(f"{lead}-keep", f"{lead}-final")
    merged = await api.http.post(members, json={"lead_id": f"{lead}-dup", "by": REP})
    assert merged.status_code == 422 and merged.json()["fields"][0]["field"] == "lead_id"
    assert f"merged into lead {lead}-final" in merged.json()["message"]  # along the chain

    items = [{"lead_id": f"{lead}-ghost"}, {"lead_id": f"{lead}-final"}, {"contact_id": "con-1"}]
    bulk = await api.http.post(f"{members}/bulk", json={"members": items, "by": REP})
    assert bulk.status_code == 200, bulk.text
    assert [(r["outcome"], r["field"]) for r in bulk.json()["results"]] == [
        ("refused", "lead_id"),
        ("added", None),
        ("added", None),
    ]
    summary = (await api.http.get(f"/campaigns/{campaign_id}/summary")).json()
    assert (summary["members"], summary["leads"]) == (2, 1)  # the unknown lead is not counted


async def test_member_statuses_move_forward_and_each_change_is_announced(api: Api) -> None:
    campaign_id = await api.campaign()
    await api.http.post(f"/campaigns/{campaign_id}/members", json={"contact_id": "con-1", "by": REP})
    status_url = f"/campaigns/{campaign_id}/members/contact:con-1/status"

    clicked = await api.http.post(status_url, json={"status": "clicked", "expected_version": 1, "by": REP})
    assert clicked.status_code == 200, clicked.text
    assert (clicked.json()["status"], clicked.json()["version"], clicked.json()["responded"]) == (
        "clicked",
        2,
        False,
    )
    attended = await api.http.post(status_url, json={"status": "attended", "by": REP})
    assert (attended.json()["status"], attended.json()["responded"]) == ("attended", True)
    same = await api.http.post(status_url, json={"status": "attended", "by": REP})
    assert same.status_code == 200 and same.json()["version"] == 3

    backwards = await api.http.post(status_url, json={"status": "opened", "by": REP})
    assert backwards.status_code == 409 and backwards.json()["fields"][0]["field"] == "status"
    stale = await api.http.post(status_url, json={"status": "unsubscribed", "expected_version": 2, "by": REP})
    assert stale.status_code == 409 and stale.json()["fields"][0]["field"] == "expected_version"
    unknown = await api.http.post(
        f"/campaigns/{campaign_id}/members/contact:nobody/status", json={"status": "opened", "by": REP}
    )
    assert unknown.status_code == 404 and unknown.json()["fields"][0]["field"] == "member_id"

    unsubscribed = await api.http.post(status_url, json={"status": "unsubscribed", "by": REP})
    assert (unsubscribed.json()["status"], unsubscribed.json()["responded"]) == ("unsubscribed", True)
    stored = (await api.http.get(f"/campaigns/{campaign_id}/members/contact:con-1")).json()
    assert [h["status"] for h in stored["status_history"]] == ["sent", "clicked", "attended", "unsubscribed"]

    changes = await api.events("campaign.member_status_changed", campaign_id, 3)
    assert [(c.previous_status, c.status, c.responded, c.member_version) for c in changes] == [
        ("sent", "clicked", False, 2),
        ("clicked", "attended", True, 3),
        ("attended", "unsubscribed", True, 4),
    ]
    assert all(c.changed_by.id == "rep-7" for c in changes)


async def test_bulk_adds_report_each_item_and_are_bounded(api: Api) -> None:
    campaign_id = await api.campaign(
        member_statuses=[
            {"status": "sent"},
            {"status": "clicked", "counts_as_response": True},
            {"status": "responded", "counts_as_response": True},
        ]
    )
    bulk = f"/campaigns/{campaign_id}/members/bulk"
    # Leads of their own: a lead another test's campaign reached first is credited there.
    lead = f"{campaign_id[:8]}-lead"
    await api.leads(*(f"{lead}-{n}" for n in range(200)))
    await api.http.post(f"/campaigns/{campaign_id}/members", json={"lead_id": f"{lead}-0", "by": REP})
    items = [
        {"lead_id": f"{lead}-0"},  # already a member
        {"lead_id": f"{lead}-1"},
        {"contact_id": "con-1", "status": "clicked"},
        {"lead_id": f"{lead}-1", "status": "clicked"},  # twice in one request
        {"lead_id": f"{lead}-2", "status": "attended"},  # not offered by this campaign
        *({"lead_id": f"{lead}-{n}"} for n in range(3, 200)),
    ]
    answer = await api.http.post(bulk, json={"members": items, "by": REP})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert (result["added"], result["already_members"], result["refused"]) == (199, 2, 1)
    assert [(r["index"], r["member_id"], r["outcome"]) for r in result["results"][:5]] == [
        (0, f"lead:{lead}-0", "already_member"),
        (1, f"lead:{lead}-1", "added"),
        (2, "contact:con-1", "added"),
        (3, f"lead:{lead}-1", "already_member"),
        (4, f"lead:{lead}-2", "refused"),
    ]
    assert "does not offer attended" in result["results"][4]["reason"]

    summary = (await api.http.get(f"/campaigns/{campaign_id}/summary")).json()
    assert (summary["members"], summary["responses"], summary["leads"]) == (200, 1, 199)
    assert Decimal(summary["response_rate"]) == Decimal("0.50")
    added = await api.events("campaign.member_added", campaign_id, 200)
    assert len(added) == 200 and len({e.member_id for e in added}) == 200

    too_many = await api.http.post(bulk, json={"members": [{"lead_id": "x"}] * 1001, "by": REP})
    assert too_many.status_code == 422 and too_many.json()["fields"][0]["field"] == "members"
    malformed = await api.http.post(
        bulk, json={"members": [{"lead_id": "new-1"}, {"lead_id": "new-2"}, {"status": "sent"}], "by": REP}
    )
    assert malformed.status_code == 422
    assert [f["field"] for f in malformed.json()["fields"]] == ["members.2.contact_id"]
    assert (await api.http.get(f"/campaigns/{campaign_id}/members/lead:new-1")).status_code == 404


async def test_which_statuses_count_as_a_response_is_configurable_and_recounts_members(api: Api) -> None:
    campaign_id = await api.campaign()
    members = [{"contact_id": f"con-{n}"} for n in range(4)]
    await api.http.post(f"/campaigns/{campaign_id}/members/bulk", json={"members": members, "by": REP})
    for contact, status in [("con-0", "clicked"), ("con-1", "registered"), ("con-2", "opened")]:
        moved = await api.http.post(
            f"/campaigns/{campaign_id}/members/contact:{contact}/status", json={"status": status, "by": REP}
        )
        assert moved.status_code == 200, moved.text

    async def responses() -> tuple[int, str]:
        summary = (await api.http.get(f"/campaigns/{campaign_id}/summary")).json()
        return summary["responses"], summary["response_rate"]

    assert await responses() == (1, "25.00")
    every = [
        {"status": "sent"},
        {"status": "opened"},
        {"status": "clicked", "counts_as_response": True},
        {"status": "responded", "counts_as_response": True},
        {"status": "registered", "counts_as_response": True},
    ]
    # Dropping attended and unsubscribed is fine (nobody holds them); clicks now count.
    revised = await api.http.patch(f"/campaigns/{campaign_id}", json={"member_statuses": every, "by": REP})
    assert revised.status_code == 200, revised.text
    assert [o["status"] for o in revised.json()["member_statuses"]] == [
        "sent",
        "opened",
        "clicked",
        "responded",
        "registered",
    ]
    assert await responses() == (2, "50.00")
    [updated] = await api.events("campaign.updated", campaign_id, 1)
    assert updated.changed_fields == ["member_statuses"]

    # Nobody may be left holding a status the campaign stops offering.
    without_opened = [o for o in every if o["status"] != "opened"]
    refused = await api.http.patch(
        f"/campaigns/{campaign_id}", json={"member_statuses": without_opened, "by": REP}
    )
    assert refused.status_code == 409 and refused.json()["fields"][0]["field"] == "member_statuses"
    assert "opened" in refused.json()["message"]
    no_response = [{"status": "sent"}, {"status": "responded"}]
    invalid = await api.http.patch(
        f"/campaigns/{campaign_id}", json={"member_statuses": no_response, "by": REP}
    )
    assert invalid.status_code == 422 and invalid.json()["fields"][0]["field"] == "member_statuses"
    stored = (await api.http.get(f"/campaigns/{campaign_id}")).json()
    assert len(stored["member_statuses"]) == 5 and stored["version"] == 2

    only_registered = await api.http.get(f"/campaigns/{campaign_id}/members", params={"status": "registered"})
    assert [m["member_id"] for m in only_registered.json()["items"]] == ["contact:con-1"]
