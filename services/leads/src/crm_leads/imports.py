"""Bulk import of leads: an NDJSON or CSV upload read into records, each validated on its own as
a ``lead.captured`` payload, so one bad row is reported and the others still go in."""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

from crm_contracts.events.leads import LeadCaptured
from crm_runtime.uploads import (
    RowProblem,
    UnreadableUpload,
    UploadRecord,
    count_statuses,
    read_upload,
)
from pydantic import BaseModel, Field

# Rows of an import are list imports unless they say otherwise.
IMPORT_DEFAULTS: dict[str, Any] = {"origin": "import", "lead_source": "list_import"}
CUSTOM_PREFIX = "custom."


class RowOutcome(BaseModel):
    row: int = Field(description="NDJSON: line number; CSV: record number after the header (1 = first)")
    external_id: str | None = None
    status: Literal["created", "updated", "unchanged", "rejected"]
    lead_id: str | None = Field(default=None, description="The lead the row's capture key identifies")
    merged_into: str | None = Field(default=None, description="Where that lead lives on if it was merged")
    changed_fields: list[str] = Field(default_factory=list)
    problems: list[RowProblem] = Field(default_factory=list)


class ImportReport(BaseModel):
    source_system: str
    counts: dict[str, int] = Field(examples=[{"created": 2, "updated": 0, "unchanged": 1, "rejected": 1}])
    rows: list[RowOutcome]

    @classmethod
    def of(cls, source_system: str, rows: list[RowOutcome]) -> ImportReport:
        counts = count_statuses((row.status for row in rows), ("created", "updated", "unchanged", "rejected"))
        return cls(source_system=source_system, counts=counts, rows=rows)


def read_lead_upload(body: bytes, content_type: str) -> list[UploadRecord]:
    """The upload's records; a CSV may only use the capture's (dotted) fields as columns."""
    return read_upload(body, content_type, check_columns=_check_columns)


def captured_from(record: UploadRecord, source_system: str) -> LeadCaptured:
    """The record as a capture; raises ValidationError naming each bad field."""
    assert record.fields is not None
    return LeadCaptured.model_validate({"source_system": source_system, **IMPORT_DEFAULTS, **record.fields})


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        for arg in get_args(annotation):
            model = _model_of(arg)
            if model is not None:
                return model
    return None


def allowed_columns() -> set[str]:
    """Column names a CSV may use: the capture's fields, nested ones dotted (``person.email``),
    and ``custom.<key>`` for free attributes."""
    columns: set[str] = set()
    for name, info in LeadCaptured.model_fields.items():
        model = _model_of(info.annotation)
        if name == "custom":
            continue
        if model is None:
            columns.add(name)
        else:
            columns.update(f"{name}.{sub}" for sub in model.model_fields)
    return columns


_ALLOWED = frozenset(allowed_columns())


def _check_columns(columns: list[str]) -> None:
    for column in columns:
        if column in _ALLOWED:
            continue
        key = column.removeprefix(CUSTOM_PREFIX)
        if column.startswith(CUSTOM_PREFIX) and key and key.isidentifier() and key[0].isalpha():
            continue
        raise UnreadableUpload(
            f"unknown column {column!r}; use {', '.join(sorted(_ALLOWED))} or custom.<key>", field=column
        )
