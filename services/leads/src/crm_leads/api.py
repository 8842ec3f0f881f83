"""HTTP routes of the leads service."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import orjson
from crm_contracts.events.common import Actor, ExternalId, Id, IsoDateTime, MultiLine, ShortText, SingleLine
from crm_contracts.events.leads import (
    CapturedAtSource,
    Company,
    Consent,
    CustomAttributes,
    Engagement,
    LeadCaptured,
    LeadOrigin,
    LeadRating,
    LeadStatus,
    Person,
    Utm,
    lead_captured_example,
)
from crm_contracts.events.picklists import PICKLIST_CODE_PATTERN, PicklistGiven
from crm_runtime import ApiError, ServiceRuntime, UnitOfWork
from crm_runtime.external_refs import ByExternalReference
from crm_runtime.jobs import Job, JobFinished, JobView
from fastapi import APIRouter, Body, Depends, Header, Query, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from .domain import (
    WORKABLE_STATUSES,
    Conversion,
    ConversionRequest,
    DuplicateLink,
    HistoryEntry,
    Lead,
    LeadAlreadyConverted,
    LeadRuleViolation,
    ManualRating,
    search_tokens,
)
from .picklists import UnknownPicklistValue
from .repository import ConcurrentModification, LeadQuery, LeadRepository, LeadSort
from .scoring import ScoreContribution, ScoringRules, ScoringRuleSet, default_rules
from .use_cases import (
    RESCORING_JOB,
    CaptureResult,
    LeadNotFound,
    Rescoring,
    assign_lead_owner,
    capture_lead,
    change_status,
    convert_lead,
    disqualify_lead,
    merge_leads,
    qualify_lead,
    rate_lead,
    replace_scoring_rules,
)

HTTP_SYSTEM = "crm-api"
MAX_SEARCH_TOKENS = 5
CAPTURE_ATTEMPTS = 3
SourceSystem = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
SearchText = Annotated[str, SingleLine(min_length=1, max_length=100)]
T = TypeVar("T")

REP_EXAMPLE: dict[str, Any] = {"id": "rep-42", "name": "Rita Rep"}


class NewLead(BaseModel):
    """A lead entered by a rep or posted by a system over HTTP. Without ``external_id`` the
    ``Idempotency-Key`` header (or a fresh id) is the capture key; without ``captured_at``, the
    time of receipt (``captured_at_source: received``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [lead_captured_example()]})

    source_system: SourceSystem = HTTP_SYSTEM
    external_id: ExternalId | None = None
    person: Person = Person()
    company: Company = Company()
    lead_source: PicklistGiven | None = Field(
        default=None,
        description="A value, label or alias of the lead_source picklist (GET /picklists/lead_source); "
        "missing or blank: unknown",
    )
    source_detail: Annotated[str, SingleLine(max_length=200)] | None = None
    origin: PicklistGiven = Field(default=LeadOrigin.MANUAL.value, description="Of the lead_origin picklist")
    campaign_id: Id | None = None
    utm: Utm | None = None
    consent: Consent = Consent()
    engagement: Engagement = Engagement()
    owner_id: Id | None = None
    custom: CustomAttributes = Field(default_factory=dict)
    captured_at: IsoDateTime | None = None


class StatusChange(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"status": "working", "by": REP_EXAMPLE, "note": "Called, follow up Friday"}]
        },
    )

    status: Literal[LeadStatus.WORKING, LeadStatus.NURTURING]
    by: Actor
    note: Annotated[str, MultiLine(max_length=500)] | None = None


class RatingChange(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"rating": "hot", "by": REP_EXAMPLE}]}
    )

    rating: LeadRating | None = Field(description="The rep's rating; null clears it so the score's applies")
    by: Actor


class OwnerChange(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"owner_id": "rep-7", "by": REP_EXAMPLE}]}
    )

    owner_id: Id | None = Field(description="The rep the lead goes to; null leaves it unassigned")
    by: Actor


class QualifyRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"rating": "hot", "by": REP_EXAMPLE}]}
    )

    rating: LeadRating | None = Field(
        default=None, description="The rep's rating (kept as an override); the score's rating when omitted"
    )
    by: Actor


class DisqualifyRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "no budget this year", "by": REP_EXAMPLE}]}
    )

    reason: ShortText
    by: Actor


class ConvertRequest(ConversionRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "by": REP_EXAMPLE,
                    "opportunity": {
                        "name": "Analytical Engines - 50 seats",
                        "amount": "12000.00",
                        "currency": "EUR",
                        "expected_close_date": "2027-03-31",
                    },
                }
            ]
        }
    )

    by: Actor


class MergeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"duplicate_id": "0b8e3c2a-8d1e-5f0a-9a57-2f6c1d4e7b90", "by": REP_EXAMPLE}]
        },
    )

    duplicate_id: Id = Field(description="The lead merged into this one; it ends as status merged")
    by: Actor


class ScoringRulesChange(ScoringRuleSet):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                default_rules().model_dump(mode="json", include={"rules", "thresholds"})
                | {"by": {"id": "admin-1"}, "expected_version": 0}
            ]
        }
    )

    by: Actor
    expected_version: int | None = Field(
        default=None, ge=0, description="The version this change is based on; 409 if the rules moved on"
    )


class LeadView(BaseModel):
    """A lead as the API shows it."""

    id: str
    version: int
    status: LeadStatus
    rating: LeadRating | None = Field(description="The rep's rating when set, else the score's")
    manual_rating: ManualRating | None
    score: int
    score_rating: LeadRating | None
    score_fit: int
    score_engagement: int
    score_explanation: list[ScoreContribution]
    scored_at: AwareDatetime | None
    scoring_rules_version: int
    source_system: str
    external_id: str
    person: Person
    company: Company
    company_domain: str | None
    lead_source: str = Field(description="The lead_source picklist's value")
    lead_source_given: str | None = Field(description="The lead_source as the latest capture wrote it")
    source_detail: str | None
    origin: str = Field(description="The lead_origin picklist's value")
    origin_given: str | None = Field(description="The origin as the latest capture wrote it")
    campaign_id: str | None
    utm: Utm | None
    consent: Consent
    engagement: Engagement
    owner_id: str | None
    custom: dict[str, Any]
    captured_at: AwareDatetime
    captured_at_source: CapturedAtSource = Field(
        description="Where captured_at comes from: the capture's own captured_at (payload), the "
        "lead.captured event's time (event_time), or when the suite received it (received)"
    )
    created_at: AwareDatetime
    updated_at: AwareDatetime
    disqualification_reason: str | None
    conversion: Conversion | None
    possible_duplicates: list[DuplicateLink]
    duplicate_of: list[str]
    merged_into: str | None
    merged_from: list[str]
    history: list[HistoryEntry]

    @classmethod
    def of(cls, lead: Lead) -> LeadView:
        return cls.model_validate(
            lead.model_dump(exclude={"capture_digest", "search_terms"}), from_attributes=True
        )


class LeadPage(BaseModel):
    items: list[LeadView]
    next_cursor: str | None = Field(description="Pass as cursor (with the same sort) for the next page")


class DuplicateView(BaseModel):
    lead_id: str
    keys: list[str] = Field(examples=[["email", "phone"]])
    captured_before: bool = Field(description="True when the other lead was captured first")
    status: LeadStatus | None
    person: Person | None
    company: Company | None
    captured_at: AwareDatetime


class DuplicatesView(BaseModel):
    lead_id: str
    status: LeadStatus
    merged_into: str | None
    duplicates: list[DuplicateView]


class RescoreJobView(JobView):
    """The rescoring job: ``processed`` counts the leads examined, ``applied`` those whose
    score, rating or explanation changed (each announced with a ``lead.updated``)."""


RESCORE_JOBS = "/scoring-rules/rescore-jobs"


def encode_cursor(sort: LeadSort, lead: Lead) -> str:
    value: Any = getattr(lead, sort.field)
    if isinstance(value, datetime):
        value = value.isoformat()
    return base64.urlsafe_b64encode(orjson.dumps([sort.value, value, lead.id])).decode().rstrip("=")


def decode_cursor(cursor: str, sort: LeadSort) -> tuple[Any, str]:
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        cursor_sort, value, lead_id = raw
        if cursor_sort != sort.value or not isinstance(lead_id, str):
            raise ValueError("cursor belongs to another sort")
        if sort.field == "score":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError("bad score")
            return value, lead_id
        return datetime.fromisoformat(value), lead_id
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError) as exc:
        raise ApiError(
            422, "validation_failed", "cursor: not a cursor of this list and sort", field="cursor"
        ) from exc


def leads_router(runtime: ServiceRuntime, repo: LeadRepository, rescoring: Rescoring) -> list[APIRouter]:
    router = APIRouter(prefix="/leads", tags=["leads"])
    read = [Depends(runtime.auth.require("read"))]
    write = [Depends(runtime.auth.require("write"))]
    admin = [Depends(runtime.auth.require("admin"))]

    async def run(work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        try:
            return await runtime.transaction(work)
        except LeadNotFound as exc:
            raise ApiError(404, "not_found", f"lead {exc} does not exist", field=exc.field) from exc
        except LeadAlreadyConverted as exc:
            raise ApiError(409, "already_converted", str(exc), field=exc.field) from exc
        except LeadRuleViolation as exc:
            error = "illegal_transition" if exc.field == "status" else "rule_violation"
            raise ApiError(409, error, str(exc), field=exc.field) from exc
        except ConcurrentModification as exc:
            raise ApiError(409, "concurrent_modification", str(exc)) from exc

    async def capture(captured: LeadCaptured, by: str) -> CaptureResult:
        for attempt in range(1, CAPTURE_ATTEMPTS + 1):
            try:
                return await runtime.transaction(lambda uow: capture_lead(repo, uow, captured, by=by))
            except ConcurrentModification:
                # The same lead captured at the same moment elsewhere: read it and apply again.
                if attempt == CAPTURE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def answer(result: CaptureResult, response: Response) -> LeadView:
        response.status_code = status.HTTP_201_CREATED if result.outcome == "created" else status.HTTP_200_OK
        response.headers["Capture-Outcome"] = result.outcome
        response.headers["Location"] = f"/leads/{result.lead.id}"
        return LeadView.of(result.lead)

    captured_responses: dict[int | str, dict[str, Any]] = {
        201: {"description": "A new lead was created"},
        200: {
            "description": "The capture key was known: the lead was updated or was already up to date "
            "(header Capture-Outcome says which). A key whose lead was merged answers with the survivor."
        },
    }

    @router.post(
        "",
        status_code=status.HTTP_201_CREATED,
        dependencies=write,
        summary="Enter or post a lead (same upsert and events as lead.captured)",
        responses=captured_responses,
    )
    async def create_lead(
        body: NewLead,
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")] = None,
    ) -> LeadView:
        external_id = body.external_id or idempotency_key or str(uuid.uuid4())
        try:
            captured = LeadCaptured.model_validate(
                {
                    **body.model_dump(exclude={"external_id"}),
                    "external_id": external_id,
                }
            )
        except ValidationError as exc:  # answered like the body's own errors, every field named
            errors = exc.errors(include_url=False)
            raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in errors]) from exc
        return answer(await run_capture(captured, f"api:{body.source_system}"), response)

    @router.post(
        "/capture",
        status_code=status.HTTP_201_CREATED,
        dependencies=write,
        summary="Capture a lead with the exact lead.captured payload, for integrating systems",
        responses=captured_responses,
    )
    async def capture_exact(
        response: Response,
        body: Annotated[
            LeadCaptured, Body(openapi_examples={"web form": {"value": lead_captured_example()}})
        ],
    ) -> LeadView:
        return answer(await run_capture(body, f"api:{body.source_system}"), response)

    async def run_capture(captured: LeadCaptured, by: str) -> CaptureResult:
        try:
            return await capture(captured, by)
        except ConcurrentModification as exc:
            raise ApiError(409, "concurrent_modification", str(exc)) from exc
        except UnknownPicklistValue as exc:
            raise ApiError(422, "unknown_picklist_value", str(exc), field=exc.field) from exc

    @router.get("/{lead_id}", dependencies=read, summary="One lead with its score, duplicates and history")
    async def get_lead(lead_id: Id) -> LeadView:
        return LeadView.of(await existing(lead_id))

    async def existing(lead_id: str) -> Lead:
        lead = await repo.get(lead_id)
        if lead is None:
            raise ApiError(404, "not_found", f"lead {lead_id} does not exist", field="lead_id")
        return lead

    @router.get(
        "/{lead_id}/duplicates",
        dependencies=read,
        summary="The leads that are likely the same person, with the keys they share",
    )
    async def get_duplicates(lead_id: Id) -> DuplicatesView:
        lead = await existing(lead_id)
        others = {
            other.id: other
            for other in await repo.get_many([link.lead_id for link in lead.possible_duplicates])
        }
        return DuplicatesView(
            lead_id=lead.id,
            status=lead.status,
            merged_into=lead.merged_into,
            duplicates=[
                DuplicateView(
                    lead_id=link.lead_id,
                    keys=link.keys,
                    captured_before=link.lead_id in lead.duplicate_of,
                    status=others[link.lead_id].status if link.lead_id in others else None,
                    person=others[link.lead_id].person if link.lead_id in others else None,
                    company=others[link.lead_id].company if link.lead_id in others else None,
                    captured_at=link.captured_at,
                )
                for link in lead.possible_duplicates
            ],
        )

    @router.get(
        "",
        dependencies=read,
        summary="List and search leads with filters, sorting and cursor pagination",
        description="Merged leads are left out unless `status=merged` is asked for. "
        "`external_system` and `external_id` (both, or neither) find the lead the capturing system "
        "knows by that id -- its `source_system` and `external_id`, a merged lead included -- "
        "through the unique capture-key index. `q` finds leads whose "
        "name, email, company name, company domain or phone starts with each of its words, ignoring "
        "case and accents (`q=ada engines`).",
    )
    async def list_leads(
        lead_status: Annotated[LeadStatus | None, Query(alias="status")] = None,
        rating: LeadRating | None = None,
        lead_source: Annotated[
            str | None,
            Query(pattern=PICKLIST_CODE_PATTERN, description="A value of the lead_source picklist"),
        ] = None,
        campaign_id: Id | None = None,
        owner_id: Id | None = None,
        captured_from: Annotated[
            IsoDateTime | None, Query(description="Captured at or after (ISO 8601 with offset)")
        ] = None,
        captured_to: Annotated[IsoDateTime | None, Query(description="Captured before")] = None,
        q: Annotated[SearchText | None, Query(examples=["ada engines"])] = None,
        sort: LeadSort = LeadSort.CAPTURED_AT_DESC,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=600, pattern=r"^[A-Za-z0-9_\-]+$")] = None,
        reference: ByExternalReference = None,
    ) -> LeadPage:
        filters: dict[str, str] = {}
        for name, value in (
            ("status", lead_status.value if lead_status else None),
            ("rating", rating.value if rating else None),
            ("lead_source", lead_source),
            ("campaign_id", campaign_id),
            ("owner_id", owner_id),
        ):
            if value is not None:
                filters[name] = value
        terms = tuple(search_tokens(q)) if q else ()
        if q is not None and not terms:
            raise ApiError(422, "validation_failed", "q: give at least one word or number", field="q")
        if len(terms) > MAX_SEARCH_TOKENS:
            raise ApiError(422, "validation_failed", f"q: at most {MAX_SEARCH_TOKENS} words", field="q")
        query = LeadQuery(
            filters=filters,
            captured_from=captured_from,
            captured_to=captured_to,
            terms=terms,
            sort=sort,
            after=decode_cursor(cursor, sort) if cursor else None,
            limit=limit,
            capture_key=(reference.system, reference.external_id) if reference else None,
        )
        leads = await repo.search(query)
        next_cursor = encode_cursor(sort, leads[-1]) if len(leads) == limit else None
        return LeadPage(items=[LeadView.of(lead) for lead in leads], next_cursor=next_cursor)

    @router.post(
        "/{lead_id}/status",
        dependencies=write,
        summary="Work or nurture a lead (who and when go into its history)",
    )
    async def set_status(lead_id: Id, body: StatusChange) -> LeadView:
        assert body.status in WORKABLE_STATUSES
        return LeadView.of(
            await run(lambda uow: change_status(repo, uow, lead_id, body.status, body.by, body.note))
        )

    @router.post(
        "/{lead_id}/rating",
        dependencies=write,
        summary="Set the rep's rating, which overrides the score's (null clears it)",
    )
    async def set_rating(lead_id: Id, body: RatingChange) -> LeadView:
        return LeadView.of(await run(lambda uow: rate_lead(repo, uow, lead_id, body.rating, body.by)))

    @router.post(
        "/{lead_id}/owner",
        dependencies=write,
        summary="Give the lead to a rep, or unassign it (a lead.updated of owner_id)",
    )
    async def set_owner(lead_id: Id, body: OwnerChange) -> LeadView:
        return LeadView.of(
            await run(lambda uow: assign_lead_owner(repo, uow, lead_id, body.owner_id, body.by))
        )

    @router.post(
        "/{lead_id}/qualify", dependencies=write, summary="Qualify a lead, optionally rating it by hand"
    )
    async def qualify(lead_id: Id, body: QualifyRequest) -> LeadView:
        return LeadView.of(await run(lambda uow: qualify_lead(repo, uow, lead_id, body.rating, body.by)))

    @router.post("/{lead_id}/disqualify", dependencies=write, summary="Disqualify a lead with a reason")
    async def disqualify(lead_id: Id, body: DisqualifyRequest) -> LeadView:
        return LeadView.of(await run(lambda uow: disqualify_lead(repo, uow, lead_id, body.reason, body.by)))

    @router.post(
        "/{lead_id}/convert",
        dependencies=write,
        summary="Convert a lead into an account, a contact and optionally an opportunity",
    )
    async def convert(lead_id: Id, body: ConvertRequest) -> LeadView:
        request = ConversionRequest.model_validate(body.model_dump(exclude={"by"}))
        currency = runtime.settings.company_currency
        return LeadView.of(
            await run(
                lambda uow: convert_lead(repo, uow, lead_id, request, body.by, company_currency=currency)
            )
        )

    @router.post(
        "/{lead_id}/merge",
        dependencies=write,
        summary="Merge a duplicate into this lead, which survives with both histories",
    )
    async def merge(lead_id: Id, body: MergeRequest) -> LeadView:
        return LeadView.of(await run(lambda uow: merge_leads(repo, uow, lead_id, body.duplicate_id, body.by)))

    # -- scoring rules ----------------------------------------------------------------------
    rules_router = APIRouter(prefix="/scoring-rules", tags=["scoring"])

    @rules_router.get("", dependencies=read, summary="The scoring rules in force (version 0: the defaults)")
    async def get_rules() -> ScoringRules:
        return await repo.scoring_rules(fresh=True)

    @rules_router.put(
        "",
        dependencies=admin,
        summary="Replace the scoring rules; the rescoring job then rescores the open leads",
    )
    async def put_rules(body: ScoringRulesChange) -> ScoringRules:
        rule_set = ScoringRuleSet(rules=body.rules, thresholds=body.thresholds)
        try:
            rules = await runtime.transaction(
                lambda uow: replace_scoring_rules(
                    repo, uow, rule_set, expected_version=body.expected_version, by=body.by
                )
            )
        except ConcurrentModification as exc:
            raise ApiError(409, "stale_version", str(exc), field="expected_version") from exc
        await rescoring.request()
        return rules

    @rules_router.post(
        "/rescore",
        dependencies=admin,
        status_code=status.HTTP_202_ACCEPTED,
        summary="Rescore every open lead scored under other rules, as a background job",
        description="Answers 202 with the job at once; `Location` is where its progress is read. "
        "There is one rescoring job at a time: asking while one is queued or running answers that one.",
        responses={
            202: {
                "description": "The rescoring job (new, or the one already under way)",
                "headers": {
                    "Location": {"description": "Where to read the job", "schema": {"type": "string"}}
                },
            }
        },
    )
    async def rescore(response: Response) -> RescoreJobView:
        job, _ = await rescoring.request()
        response.headers["Location"] = f"{RESCORE_JOBS}/{job.id}"
        return RescoreJobView.of(job)

    jobs_router = APIRouter(prefix=RESCORE_JOBS, tags=["scoring"])
    not_found: dict[int | str, dict[str, Any]] = {404: {"description": "No such rescoring job"}}

    def found(job: Job | None, job_id: uuid.UUID) -> RescoreJobView:
        if job is None:
            raise ApiError(404, "not_found", f"rescoring job {job_id} does not exist", field="job_id")
        return RescoreJobView.of(job)

    @jobs_router.get("", dependencies=read, summary="The latest rescoring jobs, newest first")
    async def list_rescore_jobs(limit: Annotated[int, Query(ge=1, le=100)] = 20) -> list[RescoreJobView]:
        jobs = await runtime.jobs.recent(RESCORING_JOB, limit)
        return [RescoreJobView.of(job) for job in jobs]

    @jobs_router.get(
        "/{job_id}",
        dependencies=read,
        summary="A rescoring job's state and progress: counts, rate and estimated time left",
        responses=not_found,
    )
    async def get_rescore_job(job_id: uuid.UUID) -> RescoreJobView:
        return found(await runtime.jobs.get(str(job_id), RESCORING_JOB), job_id)

    @jobs_router.delete(
        "/{job_id}",
        dependencies=admin,
        status_code=status.HTTP_202_ACCEPTED,
        summary="Cancel a rescoring job (a running one stops after the batch in hand)",
        description="Leads already rescored keep their new scores; the rest are rescored by the next "
        "rescoring job (a rule change, a service start or `POST /scoring-rules/rescore`).",
        responses=not_found | {409: {"description": "The job has finished already"}},
    )
    async def cancel_rescore_job(job_id: uuid.UUID) -> RescoreJobView:
        try:
            job = await runtime.jobs.cancel(str(job_id), RESCORING_JOB)
        except JobFinished as exc:
            raise ApiError(409, "job_finished", str(exc), field="job_id") from exc
        return found(job, job_id)

    return [router, rules_router, jobs_router]
