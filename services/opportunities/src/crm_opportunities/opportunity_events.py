"""The events an opportunity's changes emit, built from the records as they stand after the
change: one place for their payloads, shared by the live use cases (which emit them at once)
and the import (which builds a whole chunk's before writing them with one outbox write)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from crm_contracts import catalog
from crm_contracts.catalog import EventSpec
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.common import Actor
from crm_contracts.events.opportunities import (
    OpportunityClosed,
    OpportunityCreated,
    OpportunityFigures,
    OpportunityStageChanged,
    OpportunityUpdated,
    StageKind,
)
from crm_runtime import make_event
from pydantic import BaseModel

from .domain import Account, Opportunity, StageMove

SOURCE = "/crm/opportunities"
M = TypeVar("M", bound=BaseModel)
Emission = tuple[EventSpec[Any], CloudEvent[Any]]


def emission(spec: EventSpec[M], data: M, *, subject: str, version: int, time: datetime) -> Emission:
    return spec, make_event(spec, data, source=SOURCE, subject=subject, version=version, time=time)


def opportunity_created(opportunity: Opportunity, figures: OpportunityFigures, *, by: Actor) -> Emission:
    return emission(
        catalog.OPPORTUNITY_CREATED,
        OpportunityCreated(opportunity=figures, created_by=by),
        subject=opportunity.id,
        version=opportunity.version,
        time=opportunity.created_at,
    )


def opportunity_moved(
    opportunity: Opportunity, move: StageMove, figures: OpportunityFigures, *, by: Actor
) -> list[Emission]:
    """``opportunity.stage_changed`` (and ``opportunity.closed`` for a close) of ``move``, with
    ``opportunity`` as it stood right after it (a replayed import passes snapshots)."""
    now = move.current.entered_at
    changed = OpportunityStageChanged(
        opportunity_id=opportunity.id,
        pipeline_id=opportunity.pipeline_id,
        previous_pipeline_id=move.previous_pipeline_id,
        previous_stage_id=move.previous.stage_id,
        previous_stage_name=move.previous.stage_name,
        previous_stage_kind=move.previous.stage_kind,
        stage_id=opportunity.stage_id,
        stage_name=opportunity.stage_name,
        stage_kind=opportunity.stage_kind,
        probability=opportunity.probability,
        forecast_category=opportunity.forecast_category,
        amount=opportunity.amount,
        currency=opportunity.currency,
        expected_close_date=opportunity.expected_close_date,
        changed_at=now,
        changed_by=by,
        opportunity=figures,
    )
    events = [
        emission(
            catalog.OPPORTUNITY_STAGE_CHANGED,
            changed,
            subject=opportunity.id,
            version=opportunity.version,
            time=now,
        )
    ]
    if move.closed:
        closed = OpportunityClosed(
            opportunity_id=opportunity.id,
            won=opportunity.stage_kind is StageKind.CLOSED_WON,
            amount=opportunity.amount,
            currency=opportunity.currency,
            loss_reason=opportunity.loss_reason,
            loss_note=opportunity.loss_note,
            competitor=opportunity.competitor,
            closed_at=now,
            closed_by=by,
            opportunity=figures,
        )
        events.append(
            emission(
                catalog.OPPORTUNITY_CLOSED,
                closed,
                subject=opportunity.id,
                version=opportunity.version,
                time=now,
            )
        )
    return events


def opportunity_updated(
    opportunity: Opportunity, figures: OpportunityFigures, changed: list[str], *, by: Actor, now: datetime
) -> Emission:
    data = OpportunityUpdated(opportunity=figures, changed_fields=changed, updated_at=now, updated_by=by)
    return emission(
        catalog.OPPORTUNITY_UPDATED, data, subject=opportunity.id, version=opportunity.version, time=now
    )


def account_updated(account: Account, changed: list[str]) -> Emission:
    return emission(
        catalog.ACCOUNT_UPDATED,
        account.updated_event(changed),
        subject=account.id,
        version=account.version,
        time=account.updated_at,
    )
