"""Bulk actions on leads decided by the single-lead use cases over leads held in memory: each
item applied with its event or rejected with the field (an unknown id, a stale version, a rule
of the lead's lifecycle), the leads read once and the changed ones written once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from crm_contracts import catalog
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import LeadCaptured, LeadRating, LeadStatus
from crm_leads.bulk_actions import (
    ConvertItem,
    DisqualifyItem,
    OwnerItem,
    QualifyItem,
    assign_lead_owners,
    convert_leads,
    disqualify_leads,
    qualify_leads,
)
from crm_leads.domain import ConversionRequest, Lead
from crm_leads.picklists import Picklists
from crm_leads.repository import LeadRepository, stored_form
from crm_leads.scoring import default_rules
from crm_runtime import UnitOfWork
from crm_runtime.mongo import Document

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
REP = Actor(id="rep-1", name="Rita Rep")


class FakeOutbox:
    def __init__(self) -> None:
        self.topics: list[list[str]] = []

    def entry(self, topic: str, event: Any) -> Document:
        return {"topic": topic}

    async def add_entries(self, session: Any, entries: list[Document]) -> None:
        self.topics.append([entry["topic"] for entry in entries])


class FakeLeads:
    """The part of ``LeadRepository`` a bulk action uses, counting its reads and writes."""

    def __init__(self, leads: list[Lead]) -> None:
        self.leads = {lead.id: stored_form(lead) for lead in leads}
        self.reads = 0
        self.writes: list[list[tuple[str, int]]] = []

    async def scoring_rules(self, session: Any = None, *, fresh: bool = False) -> Any:
        return default_rules()

    async def picklists(self, session: Any = None) -> Picklists:
        return Picklists.defaults()

    async def get_many(self, lead_ids: list[str], session: Any = None) -> list[Lead]:
        self.reads += 1
        return [self.leads[i].model_copy(deep=True) for i in lead_ids if i in self.leads]

    async def save_captured(self, added: list[Lead], changed: list[tuple[Lead, int]], session: Any) -> None:
        assert added == []
        self.writes.append([(lead.id, expected) for lead, expected in changed])
        for lead, _ in changed:
            self.leads[lead.id] = lead


def lead(n: int, status: LeadStatus = LeadStatus.NEW) -> Lead:
    captured = LeadCaptured.model_validate(
        {
            "source_system": "webforms",
            "external_id": f"f-{n}",
            "person": {"first_name": f"P{n}", "email": f"p{n}@co{n}.example"},
            "lead_source": "web",
            "captured_at": "2026-11-01T10:00:00Z",
        }
    )
    made = Lead.capture(captured, default_rules(), now=NOW, by="t")
    if status is LeadStatus.QUALIFIED:
        made.qualify(None, now=NOW, by="t")
    elif status is LeadStatus.CONVERTED:
        made.convert(ConversionRequest(allow_unqualified=True), now=NOW, by=REP, company_currency="EUR")
    return made


def setup(*leads: Lead) -> tuple[FakeLeads, UnitOfWork, FakeOutbox]:
    outbox = FakeOutbox()
    return FakeLeads(list(leads)), UnitOfWork(session=cast(Any, None), outbox=cast(Any, outbox)), outbox


async def test_bulk_qualify_applies_the_open_leads_and_rejects_the_rest_with_their_field() -> None:
    new, qualified, converted, stale = (
        lead(1),
        lead(2, LeadStatus.QUALIFIED),
        lead(3, LeadStatus.CONVERTED),
        lead(4),
    )
    repo, uow, outbox = setup(new, qualified, converted, stale)
    items = [
        QualifyItem(id=new.id, rating=LeadRating.HOT),
        QualifyItem(id=qualified.id),
        QualifyItem(id=converted.id),
        QualifyItem(id="no-such-lead"),
        QualifyItem(id=stale.id, expected_version=stale.version + 1),
    ]
    result = await qualify_leads(cast(LeadRepository, repo), uow, items, REP)
    assert [(r.status, r.error.field if r.error else None) for r in result.results] == [
        ("applied", None),
        ("unchanged", None),
        ("rejected", "status"),
        ("rejected", "id"),
        ("rejected", "expected_version"),
    ]
    # Qualified and rated by hand: two history entries, two versions on, as the single route.
    assert result.results[0].version == new.version + 2 and result.results[4].version == stale.version
    stored = repo.leads[new.id]
    assert stored.status is LeadStatus.QUALIFIED and stored.rating is LeadRating.HOT
    assert repo.leads[stale.id].status is LeadStatus.NEW
    # One read, one guarded write (of the one changed lead), one outbox write of its event.
    assert repo.reads == 1 and repo.writes == [[(new.id, new.version)]]
    assert outbox.topics == [[catalog.LEAD_QUALIFIED.topic]]


async def test_bulk_disqualify_keeps_each_leads_reason() -> None:
    a, b = lead(1), lead(2)
    repo, uow, outbox = setup(a, b)
    items = [DisqualifyItem(id=a.id, reason="no budget"), DisqualifyItem(id=b.id, reason="competitor")]
    result = await disqualify_leads(cast(LeadRepository, repo), uow, items, REP)
    assert result.applied == 2
    assert [repo.leads[x.id].disqualification_reason for x in (a, b)] == ["no budget", "competitor"]
    assert outbox.topics == [[catalog.LEAD_DISQUALIFIED.topic] * 2]


async def test_bulk_convert_converts_qualified_leads_and_refuses_unqualified_ones() -> None:
    qualified, new = lead(1, LeadStatus.QUALIFIED), lead(2)
    repo, uow, outbox = setup(qualified, new)
    items = [
        ConvertItem.model_validate({"id": qualified.id, "opportunity": {"name": "Deal 1", "amount": "100"}}),
        ConvertItem(id=new.id),
    ]
    result = await convert_leads(cast(LeadRepository, repo), uow, items, REP, company_currency="USD")
    assert [r.status for r in result.results] == ["applied", "rejected"]
    error = result.results[1].error
    assert error is not None and error.field == "status" and "only qualified leads convert" in error.reason
    conversion = repo.leads[qualified.id].conversion
    assert conversion is not None and conversion.opportunity_id is not None
    assert repo.leads[new.id].status is LeadStatus.NEW
    assert outbox.topics == [[catalog.LEAD_CONVERTED.topic]]


async def test_bulk_assign_owner_announces_only_real_changes() -> None:
    a, b = lead(1), lead(2)
    repo, uow, outbox = setup(a, b)
    items = [OwnerItem(id=a.id, owner_id="rep-7"), OwnerItem(id=b.id, owner_id=None)]
    result = await assign_lead_owners(cast(LeadRepository, repo), uow, items, REP)
    assert [r.status for r in result.results] == ["applied", "unchanged"]
    assert repo.leads[a.id].owner_id == "rep-7"
    assert repo.leads[a.id].history[-1].action == "owner_assigned"
    assert outbox.topics == [[catalog.LEAD_UPDATED.topic]]
