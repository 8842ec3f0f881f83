"""Bulk actions on leads: qualify, disqualify, convert and assign an owner for many leads in
one request, each item decided by the same use case as the single-lead route (so the same
rules and the same events), over leads read with one ``$in`` query and written with one
version-guarded bulk write and one outbox write (``crm_runtime.bulk``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from crm_contracts.events.common import Actor, Id, ShortText
from crm_contracts.events.leads import LeadRating
from crm_runtime import UnitOfWork
from crm_runtime.bulk import BulkItem, BulkResult, ItemRejected, apply_items
from pydantic import Field

from .batch_store import BatchLeads
from .domain import ConversionRequest, Lead, LeadRuleViolation
from .repository import LeadRepository, LeadStore
from .use_cases import assign_lead_owner, convert_lead, disqualify_lead, qualify_lead

Item = TypeVar("Item", bound=BulkItem)


class QualifyItem(BulkItem):
    rating: LeadRating | None = Field(
        default=None, description="The rep's rating (kept as an override); the score's rating when omitted"
    )


class DisqualifyItem(BulkItem):
    reason: ShortText


class ConvertItem(BulkItem, ConversionRequest):
    """How to convert this lead, as the body of ``POST /leads/{id}/convert`` without ``by``."""


class OwnerItem(BulkItem):
    owner_id: Id | None = Field(description="The rep the lead goes to; null leaves it unassigned")


async def _each(
    repo: LeadRepository,
    uow: UnitOfWork,
    items: Sequence[Item],
    change: Callable[[LeadStore, Item], Awaitable[Lead]],
) -> BulkResult:
    store = await BatchLeads.holding(repo, uow.session, [item.id for item in items])

    async def apply(item: Item) -> tuple[bool, int]:
        lead = await store.get(item.id)
        if lead is None:
            raise ItemRejected("id", f"lead {item.id} does not exist")
        if item.expected_version is not None and item.expected_version != lead.version:
            raise ItemRejected(
                "expected_version",
                f"lead {item.id} is at version {lead.version}, not {item.expected_version}",
                version=lead.version,
            )
        try:
            changed = await change(store, item)
        except LeadRuleViolation as exc:
            raise ItemRejected(exc.field, str(exc), version=lead.version) from exc
        return changed.version != lead.version, changed.version

    result = await apply_items(uow, items, apply)
    await store.save()
    return result


async def qualify_leads(
    repo: LeadRepository, uow: UnitOfWork, items: Sequence[QualifyItem], by: Actor
) -> BulkResult:
    return await _each(
        repo, uow, items, lambda store, item: qualify_lead(store, uow, item.id, item.rating, by)
    )


async def disqualify_leads(
    repo: LeadRepository, uow: UnitOfWork, items: Sequence[DisqualifyItem], by: Actor
) -> BulkResult:
    return await _each(
        repo, uow, items, lambda store, item: disqualify_lead(store, uow, item.id, item.reason, by)
    )


async def convert_leads(
    repo: LeadRepository,
    uow: UnitOfWork,
    items: Sequence[ConvertItem],
    by: Actor,
    *,
    company_currency: str,
) -> BulkResult:
    def convert(store: LeadStore, item: ConvertItem) -> Awaitable[Lead]:
        request = ConversionRequest.model_validate(item.model_dump(exclude={"id", "expected_version"}))
        return convert_lead(store, uow, item.id, request, by, company_currency=company_currency)

    return await _each(repo, uow, items, convert)


async def assign_lead_owners(
    repo: LeadRepository, uow: UnitOfWork, items: Sequence[OwnerItem], by: Actor
) -> BulkResult:
    return await _each(
        repo, uow, items, lambda store, item: assign_lead_owner(store, uow, item.id, item.owner_id, by)
    )
