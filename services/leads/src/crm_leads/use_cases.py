"""What the leads service does, shared by its HTTP routes and its Kafka handlers. Each use
case runs inside one unit of work: the lead and the events it emits commit together."""

from __future__ import annotations

from crm_contracts import catalog
from crm_contracts.envelope import utcnow
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import (
    LeadCaptured,
    LeadCreated,
    LeadDisqualified,
    LeadQualified,
    LeadRating,
    LeadUpdated,
)
from crm_runtime import UnitOfWork, make_event

from .domain import ConversionRequest, Lead
from .repository import LeadRepository

SOURCE = "/crm/leads"


class LeadNotFound(Exception):
    pass


async def capture_lead(
    repo: LeadRepository, uow: UnitOfWork, captured: LeadCaptured, *, by: str
) -> tuple[Lead, bool]:
    """Create the lead, or update it when the capturing system sends it again.
    Returns the lead and whether it was created."""
    now = utcnow()
    candidate = Lead.capture(captured, now=now, by=by)
    existing = await repo.get(candidate.id, uow.session)
    if existing is None:
        await repo.add(candidate, uow.session)
        await uow.emit(
            catalog.LEAD_CREATED,
            make_event(
                catalog.LEAD_CREATED,
                LeadCreated(lead=candidate.snapshot()),
                source=SOURCE,
                subject=candidate.id,
                version=candidate.version,
                time=candidate.captured_at,
            ),
        )
        return candidate, True
    expected = existing.version
    changed = existing.recapture(captured, now=now, by=by)
    if changed:
        await repo.update(existing, expected, uow.session)
        await uow.emit(
            catalog.LEAD_UPDATED,
            make_event(
                catalog.LEAD_UPDATED,
                LeadUpdated(lead=existing.snapshot(), changed_fields=changed),
                source=SOURCE,
                subject=existing.id,
                version=existing.version,
            ),
        )
    return existing, False


async def _load(repo: LeadRepository, uow: UnitOfWork, lead_id: str) -> Lead:
    lead = await repo.get(lead_id, uow.session)
    if lead is None:
        raise LeadNotFound(lead_id)
    return lead


async def qualify_lead(
    repo: LeadRepository, uow: UnitOfWork, lead_id: str, rating: LeadRating, by: Actor, score: int | None
) -> Lead:
    lead = await _load(repo, uow, lead_id)
    expected = lead.version
    now = utcnow()
    lead.qualify(rating, now=now, by=by.id, score=score)
    await repo.update(lead, expected, uow.session)
    data = LeadQualified(
        lead_id=lead.id,
        rating=rating,
        score=lead.score,
        lead_source=lead.lead_source,
        campaign_id=lead.campaign_id,
        qualified_at=now,
        qualified_by=by,
    )
    await uow.emit(
        catalog.LEAD_QUALIFIED,
        make_event(
            catalog.LEAD_QUALIFIED, data, source=SOURCE, subject=lead.id, version=lead.version, time=now
        ),
    )
    return lead


async def disqualify_lead(
    repo: LeadRepository, uow: UnitOfWork, lead_id: str, reason: str, by: Actor
) -> Lead:
    lead = await _load(repo, uow, lead_id)
    expected = lead.version
    now = utcnow()
    lead.disqualify(reason, now=now, by=by.id)
    await repo.update(lead, expected, uow.session)
    data = LeadDisqualified(
        lead_id=lead.id,
        reason=reason,
        lead_source=lead.lead_source,
        campaign_id=lead.campaign_id,
        disqualified_at=now,
        disqualified_by=by,
    )
    await uow.emit(
        catalog.LEAD_DISQUALIFIED,
        make_event(
            catalog.LEAD_DISQUALIFIED, data, source=SOURCE, subject=lead.id, version=lead.version, time=now
        ),
    )
    return lead


async def convert_lead(
    repo: LeadRepository, uow: UnitOfWork, lead_id: str, request: ConversionRequest, by: Actor
) -> Lead:
    lead = await _load(repo, uow, lead_id)
    expected = lead.version
    now = utcnow()
    converted = lead.convert(request, now=now, by=by)
    await repo.update(lead, expected, uow.session)
    await uow.emit(
        catalog.LEAD_CONVERTED,
        make_event(
            catalog.LEAD_CONVERTED, converted, source=SOURCE, subject=lead.id, version=lead.version, time=now
        ),
    )
    return lead
