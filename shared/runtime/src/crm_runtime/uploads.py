"""Bulk uploads (NDJSON or CSV) read into records, each validated and imported on its own, so
one bad row is reported against its number and the others still go in."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, Field, ValidationError

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
CSV_TYPES = ("text/csv",)
UPLOAD_TYPES = CSV_TYPES + NDJSON_TYPES
MAX_ROWS = 5000


class UnreadableUpload(ValueError):
    """The upload as a whole cannot be read (wrong type, not UTF-8, bad header, too many rows)."""

    def __init__(self, message: str, field: str = "(body)") -> None:
        super().__init__(message)
        self.field = field


class RowProblem(BaseModel):
    field: str = Field(examples=["person.email"])
    reason: str = Field(examples=["value is not a valid email address"])


@dataclass(frozen=True)
class UploadRecord:
    """One record: its fields, or why it could not even be read. ``number`` is the NDJSON line
    number, or the CSV record number after the header (1 = first)."""

    number: int
    fields: dict[str, Any] | None
    problem: RowProblem | None = None

    @property
    def external_id(self) -> str | None:
        value = self.fields.get("external_id") if self.fields else None
        return str(value) if value is not None else None


def media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def read_upload(
    body: bytes,
    content_type: str,
    *,
    max_rows: int = MAX_ROWS,
    check_columns: Callable[[list[str]], None] | None = None,
) -> list[UploadRecord]:
    """The upload's records. CSV columns with a dot (``person.email``) become nested fields;
    ``check_columns`` may refuse a CSV header by raising UnreadableUpload."""
    kind = media_type(content_type)
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableUpload(f"the upload is not UTF-8: {exc}") from exc
    if kind in NDJSON_TYPES:
        records = _ndjson_records(text)
    elif kind in CSV_TYPES:
        records = _csv_records(text, check_columns)
    else:
        raise UnreadableUpload(f"send one of {', '.join(UPLOAD_TYPES)}, not {kind or 'nothing'}")
    if len(records) > max_rows:
        raise UnreadableUpload(f"at most {max_rows} rows per upload, got {len(records)}")
    return records


def problems_of(exc: ValidationError) -> list[RowProblem]:
    return [
        RowProblem(field=".".join(str(part) for part in err["loc"]) or "(row)", reason=err["msg"])
        for err in exc.errors(include_url=False)
    ]


def count_statuses(statuses: Iterable[str], known: Iterable[str] = ()) -> dict[str, int]:
    """How many rows ended in each status (every ``known`` status present, even at 0)."""
    counts = dict.fromkeys(known, 0)
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


def unreadable_record(number: int, reason: str) -> UploadRecord:
    return UploadRecord(number, None, RowProblem(field="(row)", reason=reason))


def _ndjson_records(text: str) -> list[UploadRecord]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            records.append(unreadable_record(number, f"not JSON: {exc}"))
            continue
        if not isinstance(value, dict):
            records.append(unreadable_record(number, "not a JSON object"))
            continue
        records.append(UploadRecord(number, value))
    return records


def _csv_records(text: str, check_columns: Callable[[list[str]], None] | None) -> list[UploadRecord]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise UnreadableUpload("the CSV has no header row")
    columns = [column.strip() for column in header]
    if len(set(columns)) != len(columns):
        twice = next(column for column in columns if columns.count(column) > 1)
        raise UnreadableUpload(f"column {twice!r} appears twice", field=twice)
    if check_columns is not None:
        check_columns(columns)
    records = []
    for number, values in enumerate(reader, start=1):
        if not any(value.strip() for value in values):
            continue
        if len(values) > len(columns):
            records.append(unreadable_record(number, f"{len(values)} values for {len(columns)} columns"))
            continue
        records.append(UploadRecord(number, nest_columns(zip(columns, values, strict=False))))
    return records


def nest_columns(cells: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``person.email`` columns into ``{"person": {"email": ...}}``. Empty cells are "not
    given", so defaults apply as they would for a key missing from a JSON record."""
    record: dict[str, Any] = {}
    for column, value in cells:
        if value.strip() == "":
            continue
        section, dot, name = column.partition(".")
        if dot:
            record.setdefault(section, {})[name] = value
        else:
            record[column] = value
    return record
