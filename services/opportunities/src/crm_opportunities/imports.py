"""Bulk import from another CRM: the rows of an NDJSON or CSV upload, each validated on its own,
so one bad row is reported and the others still go in."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import date
from typing import Any, Literal

from crm_contracts.events.common import Currency, Id, Money, Percent, ShortText
from crm_contracts.events.leads import LeadSource
from crm_contracts.events.opportunities import AccountType
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from .domain import DEFAULT_PIPELINE_ID, AccountTier, LossReason

# Ids derived from (system, kind, external id): importing the same export again updates the
# same records instead of duplicating them.
IMPORT_NAMESPACE = uuid.UUID("0f6d3f5e-2b9a-4c1e-8d47-3a5e9c1b7d20")
ExternalId = Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")
MAX_ROWS = 5000

NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-seq")
CSV_TYPES = ("text/csv",)


def imported_id(kind: str, system: str, external_id: str) -> str:
    return str(uuid.uuid5(IMPORT_NAMESPACE, f"{system}\x1f{kind}\x1f{external_id}"))


class ImportRow(BaseModel):
    """One record of an upload, identified by its id in the CRM it comes from."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    external_id: str = ExternalId


class AccountRow(ImportRow):
    name: ShortText
    type: AccountType = AccountType.PROSPECT
    tier: AccountTier | None = None
    industry: str | None = Field(default=None, max_length=100)
    employees: int | None = Field(default=None, ge=0, le=10_000_000)
    annual_revenue: Money | None = None
    website: str | None = Field(default=None, max_length=300)
    domain: str | None = Field(default=None, max_length=253, pattern=r"^[A-Za-z0-9.\-]+$")
    street: str | None = Field(default=None, max_length=200)
    postal_code: str | None = Field(default=None, max_length=20)
    city: str | None = Field(default=None, max_length=100)
    region: str | None = Field(default=None, max_length=100)
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    owner_id: Id | None = None
    parent_external_id: str | None = Field(default=None, min_length=1, max_length=128)
    created_at: AwareDatetime | None = None


class OpportunityRow(ImportRow):
    name: ShortText
    account_external_id: str | None = Field(default=None, min_length=1, max_length=128)
    account_id: Id | None = Field(default=None, description="An account of this service, instead")
    pipeline_id: Id = DEFAULT_PIPELINE_ID
    stage_id: Id | None = Field(default=None, description="The original stage; the first one when omitted")
    probability: Percent | None = None
    amount: Money | None = None
    currency: Currency = "EUR"
    expected_close_date: date | None = None
    owner_id: Id | None = None
    lead_source: LeadSource | None = None
    campaign_id: Id | None = None
    created_at: AwareDatetime | None = Field(default=None, description="The original creation time")
    closed_at: AwareDatetime | None = None
    loss_reason: LossReason | None = None

    @model_validator(mode="after")
    def _one_account(self) -> OpportunityRow:
        if (self.account_external_id is None) == (self.account_id is None):
            raise ValueError("give exactly one of account_external_id and account_id")
        return self


class RowProblem(BaseModel):
    field: str
    reason: str


class RowOutcome(BaseModel):
    row: int = Field(description="1-based position of the record in the upload (CSV: after the header)")
    external_id: str | None = None
    status: Literal["created", "updated", "matched", "unchanged", "failed"]
    id: str | None = None
    changed_fields: list[str] = Field(default_factory=list)
    problems: list[RowProblem] = Field(default_factory=list)


class ImportReport(BaseModel):
    source_system: str
    counts: dict[str, int]
    rows: list[RowOutcome]

    @classmethod
    def of(cls, source_system: str, rows: list[RowOutcome]) -> ImportReport:
        counts: dict[str, int] = {}
        for row in rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        return cls(source_system=source_system, counts=counts, rows=rows)


class UnreadableUpload(ValueError):
    """The upload as a whole cannot be read (wrong type, no header, too many rows)."""


def parse_rows(body: bytes, content_type: str) -> list[dict[str, Any] | str]:
    """The upload's records as dicts; a record that is not even an object becomes the text of
    its problem, so it can be reported against its row number."""
    media_type = content_type.split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableUpload(f"the upload is not UTF-8: {exc}") from exc
    rows: list[dict[str, Any] | str]
    if media_type in NDJSON_TYPES:
        rows = [_json_record(line) for line in text.splitlines() if line.strip()]
    elif media_type in CSV_TYPES:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise UnreadableUpload("the CSV has no header row")
        rows = [_csv_record(record) for record in reader]
    else:
        raise UnreadableUpload(
            f"send {', '.join(CSV_TYPES + NDJSON_TYPES)}, not {media_type or 'no content type'}"
        )
    if len(rows) > MAX_ROWS:
        raise UnreadableUpload(f"at most {MAX_ROWS} rows per upload, got {len(rows)}")
    return rows


def _json_record(line: str) -> dict[str, Any] | str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    return record if isinstance(record, dict) else "not a JSON object"


def _csv_record(record: dict[str | Any, str | Any]) -> dict[str, Any] | str:
    if None in record:
        return "more values than header columns"
    # Empty cells mean "not given", so defaults apply as they would for a missing JSON key.
    return {key: value for key, value in record.items() if value not in (None, "")}


def problems_of(exc: ValidationError) -> list[RowProblem]:
    return [
        RowProblem(field=".".join(str(part) for part in err["loc"]) or "(row)", reason=err["msg"])
        for err in exc.errors(include_url=False)
    ]
