"""HTTP routes of the leads service."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from crm_contracts.envelope import utcnow
from crm_contracts.events.common import Actor, Id
from crm_contracts.events.leads import (
    Company,
    Consent,
    CustomAttributes,
    Engagement,
    LeadCaptured,
    LeadOrigin,
    LeadRating,
    LeadSource,
    LeadStatus,
    Person,
    Utm,
    lead_captured_example,
)
from crm_runtime import ApiError, ServiceRuntime, UnitOfWork
from fastapi import APIRouter, Depends, Header, Query, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from .domain import ConversionRequest, Lead, LeadAlreadyConverted, LeadRuleViolation
from .repository import ConcurrentModification, LeadRepository
from .use_cases import LeadNotFound, capture_lead, convert_lead, disqualify_lead, qualify_lead

HTTP_SYSTEM = "crm-api"


class NewLead(BaseModel):
    """A lead entered by a rep or posted by a system over HTTP."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [lead_captured_example()]})

    source_system: str = Field(default=HTTP_SYSTEM, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    external_id: str | None = Field(default=None, min_length=1, max_length=128)
    person: Person = Person()
    company: Company = Company()
    lead_source: LeadSource = LeadSource.OTHER
    source_detail: str | None = Field(default=None, max_length=200)
    origin: LeadOrigin = LeadOrigin.MANUAL
    campaign_id: Id | None = None
    utm: Utm | None = None
    consent: Consent = Consent()
    engagement: Engagement = Engagement()
    owner_id: Id | None = None
    custom: CustomAttributes = Field(default_factory=dict)
    captured_at: AwareDatetime | None = None


class QualifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rating: LeadRating
    score: int | None = Field(default=None, ge=0, le=100)
    by: Actor


class DisqualifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=200)
    by: Actor


class ConvertRequest(ConversionRequest):
    by: Actor


class LeadView(BaseModel):
    """A lead as the API shows it."""

    id: str
    version: int
    status: LeadStatus
    rating: LeadRating | None
    score: int | None
    source_system: str
    external_id: str
    person: Person
    company: Company
    lead_source: LeadSource
    origin: LeadOrigin
    campaign_id: str | None
    owner_id: str | None
    captured_at: AwareDatetime
    created_at: AwareDatetime
    updated_at: AwareDatetime
    company_domain: str | None
    disqualification_reason: str | None
    conversion: dict[str, Any] | None
    duplicate_of: list[str]
    history: list[dict[str, Any]]

    @classmethod
    def of(cls, lead: Lead) -> LeadView:
        return cls.model_validate(lead.model_dump())


class LeadPage(BaseModel):
    items: list[LeadView]
    next_cursor: str | None


def leads_router(runtime: ServiceRuntime, repo: LeadRepository) -> APIRouter:
    router = APIRouter(prefix="/leads", tags=["leads"])
    read = [Depends(runtime.auth.require("read"))]
    write = [Depends(runtime.auth.require("write"))]

    async def run(work: Any) -> Lead:
        try:
            result: Lead = await runtime.transaction(work)
        except LeadNotFound as exc:
            raise ApiError(404, "not_found", f"lead {exc} does not exist") from exc
        except LeadAlreadyConverted as exc:
            raise ApiError(409, "already_converted", str(exc), field="status") from exc
        except LeadRuleViolation as exc:
            raise ApiError(409, "illegal_transition", str(exc), field="status") from exc
        except ConcurrentModification as exc:
            raise ApiError(409, "concurrent_modification", str(exc)) from exc
        return result

    @router.post(
        "",
        status_code=status.HTTP_201_CREATED,
        dependencies=write,
        summary="Capture a lead over HTTP (same path as the lead.captured event)",
        responses={200: {"description": "The same lead was sent before: updated, not duplicated"}},
    )
    async def create_lead(
        body: NewLead,
        idempotency_key: Annotated[str | None, Header(max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")] = None,
    ) -> LeadView:
        external_id = body.external_id or idempotency_key or str(uuid.uuid4())
        captured = LeadCaptured.model_validate(
            {
                **body.model_dump(exclude={"external_id", "captured_at"}),
                "external_id": external_id,
                "captured_at": body.captured_at or utcnow(),
            }
        )

        async def work(uow: UnitOfWork) -> Lead:
            lead, _ = await capture_lead(repo, uow, captured, by=HTTP_SYSTEM)
            return lead

        return LeadView.of(await run(work))

    @router.get("/{lead_id}", dependencies=read, summary="One lead with its history")
    async def get_lead(lead_id: Id) -> LeadView:
        lead = await repo.get(lead_id)
        if lead is None:
            raise ApiError(404, "not_found", f"lead {lead_id} does not exist", field="lead_id")
        return LeadView.of(lead)

    @router.get("", dependencies=read, summary="List leads with filters and cursor pagination")
    async def list_leads(
        lead_status: Annotated[LeadStatus | None, Query(alias="status")] = None,
        rating: LeadRating | None = None,
        lead_source: LeadSource | None = None,
        campaign_id: Id | None = None,
        owner_id: Id | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Id | None = None,
    ) -> LeadPage:
        filters: dict[str, Any] = {}
        for name, value in (
            ("status", lead_status),
            ("rating", rating),
            ("lead_source", lead_source),
            ("campaign_id", campaign_id),
            ("owner_id", owner_id),
        ):
            if value is not None:
                filters[name] = value.value if hasattr(value, "value") else value
        leads = await repo.list(filters=filters, limit=limit, after_id=cursor)
        next_cursor = leads[-1].id if len(leads) == limit else None
        return LeadPage(items=[LeadView.of(lead) for lead in leads], next_cursor=next_cursor)

    @router.post("/{lead_id}/qualify", dependencies=write, summary="Qualify a lead as hot, warm or cold")
    async def qualify(lead_id: Id, body: QualifyRequest) -> LeadView:
        async def work(uow: UnitOfWork) -> Lead:
            return await qualify_lead(repo, uow, lead_id, body.rating, body.by, body.score)

        return LeadView.of(await run(work))

    @router.post("/{lead_id}/disqualify", dependencies=write, summary="Disqualify a lead with a reason")
    async def disqualify(lead_id: Id, body: DisqualifyRequest) -> LeadView:
        async def work(uow: UnitOfWork) -> Lead:
            return await disqualify_lead(repo, uow, lead_id, body.reason, body.by)

        return LeadView.of(await run(work))

    @router.post(
        "/{lead_id}/convert",
        dependencies=write,
        summary="Convert a lead into an account, a contact and optionally an opportunity",
    )
    async def convert(lead_id: Id, body: ConvertRequest) -> LeadView:
        request = ConversionRequest.model_validate(body.model_dump(exclude={"by"}))

        async def work(uow: UnitOfWork) -> Lead:
            return await convert_lead(repo, uow, lead_id, request, body.by)

        return LeadView.of(await run(work))

    return router
