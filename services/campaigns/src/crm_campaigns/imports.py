"""Import jobs for campaign members (``crm_runtime.imports``): each row of a CSV or NDJSON file
is an exported membership of a lead: the campaign (by id or by name), the lead (its id here, or
its id in the system it was captured from), and the statuses it held with their original dates.

A chunk is applied set-based: the campaigns it names in one query, the leads in one, their
memberships, conversions and opportunities in one each (``batch_store``), then one bulk write
per collection and one outbox write. A row naming something unknown, a status the campaign does
not offer or dates out of order is rejected with the column, the value and what would be valid;
the other rows go in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from crm_contracts.envelope import utcnow
from crm_contracts.events.campaigns import MemberStatus
from crm_contracts.events.common import Actor, Id, IsoDateTime, ShortText
from crm_runtime import UnitOfWork
from crm_runtime.imports import (
    SOURCE_SYSTEM,
    ImportContext,
    ImportRow,
    ImportTarget,
    Rejection,
    rejections_of,
)
from crm_runtime.suggestions import did_you_mean, unknown_reason
from crm_runtime.uploads import UnreadableUpload
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .batch_store import LeadBatch
from .domain import (
    Campaign,
    CampaignRuleViolation,
    LeadReference,
    capture_key,
    imported_history,
    surviving_lead,
)
from .repository import CampaignRepository, MemberRepository, OpportunityRepository
from .use_cases import import_lead_member

# A file's dates may come from a clock a little ahead; beyond that a date is a mistake.
CLOCK_SKEW = timedelta(minutes=5)
# How many campaigns' names a rejected campaign reference is compared with.
SUGGESTION_POOL = 10_000
DATE_HINT = " (ISO 8601 with a time zone, e.g. 2025-03-04T10:00:00Z)"
DATE_COLUMNS = ("joined_at", "responded_at", "status_at")


class MemberRow(BaseModel):
    """One exported campaign membership of a lead."""

    model_config = ConfigDict(extra="forbid")

    external_id: ShortText | None = Field(default=None, description="The membership's id in the source")
    campaign_id: Id | None = None
    campaign_name: ShortText | None = Field(default=None, description="Instead of campaign_id: its name")
    lead_id: Id | None = None
    lead_external_id: ShortText | None = Field(
        default=None, description="Instead of lead_id: the lead's id in the system it was captured from"
    )
    lead_source_system: Annotated[str, Field(pattern=SOURCE_SYSTEM)] | None = Field(
        default=None, description="That system (default: the import's source_system)"
    )
    status: MemberStatus | None = Field(default=None, description="Where it stands (default: first step)")
    joined_at: IsoDateTime
    responded_at: IsoDateTime | None = None
    status_at: IsoDateTime | None = Field(default=None, description="When it reached status")


COLUMNS = frozenset(MemberRow.model_fields)


def _check_columns(columns: list[str]) -> None:
    for column in columns:
        if column not in COLUMNS:
            listed = ", ".join(sorted(COLUMNS))
            raise UnreadableUpload(
                f"unknown column {column!r}{did_you_mean(column, COLUMNS)} (columns: {listed})", field=column
            )


def member_key(fields: dict[str, Any], source_system: str) -> str | None:
    """Rows naming one campaign (as written) and one lead are one membership."""
    campaign = fields.get("campaign_id") or fields.get("campaign_name")
    if fields.get("lead_id") is not None:
        lead = f"id\x1f{fields['lead_id']}"
    elif fields.get("lead_external_id") is not None:
        lead = capture_key(
            str(fields.get("lead_source_system") or source_system), str(fields["lead_external_id"])
        )
    else:
        return None
    return f"{campaign}\x1e{lead}" if campaign is not None else None


@dataclass(frozen=True)
class _Valid:
    row: ImportRow
    member: MemberRow
    capture_key: str | None


def _validated(row: ImportRow, source_system: str) -> _Valid | list[Rejection]:
    try:
        member = MemberRow.model_validate(row.fields)
    except ValidationError as exc:
        return [
            r.model_copy(update={"reason": r.reason + DATE_HINT}) if r.column in DATE_COLUMNS else r
            for r in rejections_of(row, exc)
        ]
    rejections = []
    if (member.campaign_id is None) == (member.campaign_name is None):
        rejections.append(
            Rejection.of(row, "campaign_id", member.campaign_id, "give campaign_id or campaign_name")
        )
    if (member.lead_id is None) == (member.lead_external_id is None):
        rejections.append(Rejection.of(row, "lead_id", member.lead_id, "give lead_id or lead_external_id"))
    latest = utcnow() + CLOCK_SKEW
    for column in DATE_COLUMNS:
        value = getattr(member, column)
        if value is not None and value > latest:
            rejections.append(Rejection.of(row, column, row.fields.get(column), "lies in the future"))
    if rejections:
        return rejections
    key = None
    if member.lead_external_id is not None:
        key = capture_key(member.lead_source_system or source_system, member.lead_external_id)
    return _Valid(row, member, key)


async def _campaigns_of(
    campaigns: CampaignRepository, rows: list[_Valid], uow: UnitOfWork
) -> tuple[dict[str, Campaign], dict[str, list[Campaign]], list[tuple[str, str]]]:
    """The campaigns named by id and by name, and (only if a reference is unknown) the ids and
    names a rejection may suggest."""
    ids = {v.member.campaign_id for v in rows if v.member.campaign_id is not None}
    names = {v.member.campaign_name for v in rows if v.member.campaign_name is not None}
    found = await campaigns.named(ids, names, uow.session) if rows else []
    by_id = {c.id: c for c in found}
    by_name: dict[str, list[Campaign]] = {}
    for campaign in found:
        if campaign.name in names:
            by_name.setdefault(campaign.name, []).append(campaign)
    pool: list[tuple[str, str]] = []
    if ids - by_id.keys() or names - by_name.keys():
        pool = await campaigns.names(uow.session, limit=SUGGESTION_POOL)
    return by_id, by_name, pool


def _campaign_of(
    valid: _Valid, by_id: dict[str, Campaign], by_name: dict[str, list[Campaign]], pool: list[tuple[str, str]]
) -> Campaign | Rejection:
    member, row = valid.member, valid.row
    if member.campaign_id is not None:
        campaign = by_id.get(member.campaign_id)
        if campaign is None:
            reason = unknown_reason("campaign", member.campaign_id, [i for i, _ in pool])
            return Rejection.of(row, "campaign_id", member.campaign_id, reason)
        return campaign
    assert member.campaign_name is not None
    named = by_name.get(member.campaign_name, [])
    if not named:
        reason = unknown_reason("campaign", member.campaign_name, [n for _, n in pool])
        return Rejection.of(row, "campaign_name", member.campaign_name, reason)
    if len(named) > 1:
        ids = ", ".join(sorted(c.id for c in named))
        reason = f"{len(named)} campaigns have this name ({ids}): give campaign_id"
        return Rejection.of(row, "campaign_name", member.campaign_name, reason)
    return named[0]


def member_import(
    campaigns: CampaignRepository, members: MemberRepository, opportunities: OpportunityRepository
) -> ImportTarget:
    """``POST /imports/members``: each row an exported membership of a lead, imported as a
    member that lived through its statuses (``import_lead_member``)."""

    async def apply(rows: list[ImportRow], context: ImportContext, uow: UnitOfWork) -> list[Rejection]:
        rejections: list[Rejection] = []
        valid: list[_Valid] = []
        for row in rows:  # everything validated before the chunk writes anything
            checked = _validated(row, context.source_system)
            if isinstance(checked, list):
                rejections += checked
            else:
                valid.append(checked)
        by_id, by_name, pool = await _campaigns_of(campaigns, valid, uow)
        lead_ids = {v.member.lead_id for v in valid if v.member.lead_id is not None}
        keys = {v.capture_key for v in valid if v.capture_key is not None}
        known = await members.known_leads(lead_ids, keys, uow.session) if valid else []
        by_key: dict[str, LeadReference] = {lead.capture_key: lead for lead in known}
        batch = await LeadBatch.load(
            members,
            opportunities,
            uow.session,
            lead_ids=lead_ids | {lead.lead_id for lead in known},
        )
        directory = {lead.lead_id for lead in known}
        by = Actor(id=f"import:{context.source_system}", name="Campaign members import")
        async with uow.one_outbox_write():
            for checked in valid:
                member, row = checked.member, checked.row
                campaign = _campaign_of(checked, by_id, by_name, pool)
                if isinstance(campaign, Rejection):
                    rejections.append(campaign)
                    continue
                if checked.capture_key is not None:
                    lead = by_key.get(checked.capture_key)
                    if lead is None:
                        rejections.append(_unknown_lead(row, member, context.source_system))
                        continue
                    lead_id = lead.lead_id
                else:
                    assert member.lead_id is not None
                    lead_id = member.lead_id
                    if lead_id not in directory and not batch.members.known(lead_id):
                        rejections.append(_unknown_lead(row, member, context.source_system))
                        continue
                merged_into = await batch.members.merged_into([lead_id], uow.session)
                if lead_id in merged_into:
                    rejections.append(_merged_lead(row, member, surviving_lead(lead_id, merged_into)))
                    continue
                try:
                    history = imported_history(
                        campaign,
                        status=member.status,
                        joined_at=member.joined_at,
                        responded_at=member.responded_at,
                        status_at=member.status_at,
                    )
                except CampaignRuleViolation as exc:
                    rejections.append(Rejection.of(row, exc.field, row.fields.get(exc.field), exc.reason))
                    continue
                await import_lead_member(
                    batch.members, batch.opportunities, uow, campaign, lead_id, history, by=by
                )
            await batch.save()
        return rejections

    return ImportTarget(
        object="members",
        summary="Import campaign members (leads) from CSV or NDJSON as a background job",
        apply=apply,
        # The leads import's default: a file of leads and a file of their memberships from one
        # export name the leads in the same namespace.
        default_source_system="list-import",
        check_columns=_check_columns,
        row_key=member_key,
        example_csv="campaign_name,lead_external_id,status,joined_at,responded_at\n"
        "Spring fair 2025,row-1,attended,2025-03-04T10:00:00Z,2025-03-10T09:00:00Z\n",
        example_ndjson='{"campaign_id": "fair-2025", "lead_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7", '
        '"status": "registered", "joined_at": "2025-03-04T10:00:00Z"}\n',
    )


def _unknown_lead(row: ImportRow, member: MemberRow, source_system: str) -> Rejection:
    column, value, what = "lead_id", member.lead_id, "unknown lead"
    if member.lead_external_id is not None:
        system = member.lead_source_system or source_system
        column, value = "lead_external_id", member.lead_external_id
        what = f"no lead captured from {system} with this id"
    return Rejection.of(
        row,
        column,
        value,
        f"{what}: the campaigns service has not seen its lead.created (import the leads first; "
        "import these rows again once they are in)",
    )


def _merged_lead(row: ImportRow, member: MemberRow, survivor: str) -> Rejection:
    column = "lead_id" if member.lead_id is not None else "lead_external_id"
    value = member.lead_id if member.lead_id is not None else member.lead_external_id
    return Rejection.of(
        row, column, value, f"the lead was merged into lead {survivor}: name lead_id {survivor} instead"
    )
