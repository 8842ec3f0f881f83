"""Bulk actions on opportunities: assign owners and move stages (closing as won or lost
included: a closed stage, with the loss reason a lost one needs) for many opportunities in
one request. Each item is decided by the same use case as the single-record route, so the
same stage rules and events, over records read and written set-based (``BulkRecords``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from crm_contracts.events.common import Actor, Id, Percent
from crm_runtime import UnitOfWork
from crm_runtime.bulk import BulkItem, BulkResult, ItemRejected, apply_items
from pydantic import Field

from .bulk_records import BulkRecords
from .domain import IllegalTransition, InvalidRequest, LossReason, Opportunity, OpportunityChanges
from .repository import Repositories
from .use_cases import NotFound, Policy, StaleVersion, move_opportunity, update_opportunity

Item = TypeVar("Item", bound=BulkItem)


class OwnerItem(BulkItem):
    owner_id: Id | None = Field(description="The rep the opportunity goes to; null leaves it unassigned")


class StageItem(BulkItem):
    stage_id: Id = Field(description="A stage of the opportunity's pipeline; a closed one closes it")
    loss_reason: LossReason | None = Field(default=None, description="Required when closing as lost")
    probability: Percent | None = Field(default=None, description="Overrides the stage's default")


async def _each(
    repos: Repositories,
    uow: UnitOfWork,
    items: Sequence[Item],
    change: Callable[[Repositories, Item], Awaitable[Opportunity]],
) -> BulkResult:
    records = await BulkRecords.load(repos, uow.session, [item.id for item in items])

    async def apply(item: Item) -> tuple[bool, int]:
        before = await records.repos.opportunities.get(item.id, uow.session)
        if before is None:
            raise ItemRejected("id", f"opportunity {item.id} does not exist")
        try:
            after = await change(records.repos, item)
        except StaleVersion as exc:
            raise ItemRejected("expected_version", str(exc), version=before.version) from exc
        except (IllegalTransition, InvalidRequest, NotFound) as exc:
            raise ItemRejected(exc.field, str(exc), version=before.version) from exc
        return after.version != before.version, after.version

    result = await apply_items(uow, items, apply)
    await records.save()
    return result


async def assign_opportunity_owners(
    repos: Repositories, uow: UnitOfWork, items: Sequence[OwnerItem], by: Actor
) -> BulkResult:
    """As ``PATCH /opportunities/{id}`` with ``owner_id``: an ``opportunity.updated`` each."""
    return await _each(
        repos,
        uow,
        items,
        lambda held, item: update_opportunity(
            held,
            uow,
            item.id,
            OpportunityChanges(owner_id=item.owner_id),
            by=by,
            expected_version=item.expected_version,
        ),
    )


async def move_opportunities(
    repos: Repositories, uow: UnitOfWork, policy: Policy, items: Sequence[StageItem], by: Actor
) -> BulkResult:
    """As ``POST /opportunities/{id}/stage``: an ``opportunity.stage_changed`` each, and an
    ``opportunity.closed`` for each it closes (a won deal makes its prospect a customer)."""

    async def move(held: Repositories, item: StageItem) -> Opportunity:
        current = await held.opportunities.get(item.id, uow.session)
        if current is not None and _already_there(current, item):
            return current  # a retried request: the move is done, nothing to announce
        return await move_opportunity(
            held,
            uow,
            policy,
            item.id,
            item.stage_id,
            by=by,
            expected_version=item.expected_version,
            loss_reason=item.loss_reason,
            probability=item.probability,
        )

    return await _each(repos, uow, items, move)


def _already_there(opportunity: Opportunity, item: StageItem) -> bool:
    """In the stage asked for, with the probability asked for (the single route's 409 "already
    in stage"; a bulk request answers it ``unchanged`` so that sending it again is harmless).
    A stale ``expected_version`` still rejects it."""
    if item.expected_version is not None and item.expected_version != opportunity.version:
        return False
    return opportunity.stage_id == item.stage_id and item.probability in (None, opportunity.probability)
