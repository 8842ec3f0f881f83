"""Import jobs for leads: each row of a CSV or NDJSON file is validated on its own as a
``lead.captured`` payload and captured, a chunk of rows per transaction (``crm_runtime.imports``);
a bad row is rejected naming its column and the others still go in."""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

from crm_contracts.events.leads import LeadCaptured
from crm_runtime import UnitOfWork
from crm_runtime.imports import ImportContext, ImportRow, ImportTarget, Rejection, rejections_of
from crm_runtime.uploads import UnreadableUpload
from pydantic import BaseModel, ValidationError

from .domain import timed_capture
from .picklists import UnknownPicklistValue
from .repository import LeadRepository
from .use_cases import capture_leads

# Rows of an import are list imports unless they say otherwise.
IMPORT_DEFAULTS: dict[str, Any] = {"origin": "import", "lead_source": "list_import"}
CUSTOM_PREFIX = "custom."


def captured_from(fields: dict[str, Any], source_system: str) -> LeadCaptured:
    """The row as a capture; raises ValidationError naming each bad field."""
    return LeadCaptured.model_validate({"source_system": source_system, **IMPORT_DEFAULTS, **fields})


def capture_key(fields: dict[str, Any], source_system: str) -> str | None:
    """Rows with one capture key (capturing system and its id) are one lead."""
    external_id = fields.get("external_id")
    if external_id is None:
        return None
    return f"{fields.get('source_system') or source_system}\x1f{external_id}"


def lead_import(repo: LeadRepository) -> ImportTarget:
    """``POST /imports/leads``: each row is a ``lead.captured`` payload and goes through the
    one capture path (upsert by capture key, de-duplication, scoring, ``lead.created`` /
    ``lead.updated`` with the row's own capture time, else the upload's receipt), a chunk
    set-based like a fetched batch of ``lead.captured`` (``capture_leads``: a few ``$in``
    reads, one insert, one bulk write, one outbox write)."""

    async def apply(rows: list[ImportRow], context: ImportContext, uow: UnitOfWork) -> list[Rejection]:
        rejections: list[Rejection] = []
        captures: list[LeadCaptured] = []
        picklists = await repo.picklists(uow.session)
        for row in rows:  # everything validated before the chunk writes anything
            try:
                captured = captured_from(row.fields, context.source_system)
                picklists.fold(captured)  # a source or origin the lists refuse rejects the row
            except ValidationError as exc:
                rejections += rejections_of(row, exc)
            except UnknownPicklistValue as exc:
                rejections.append(Rejection.of(row, exc.field, exc.given, exc.reason))
            else:
                # A row without captured_at was captured, as far as the suite knows, when the
                # upload arrived (the same time for every chunk, and for a resumed job).
                captures.append(timed_capture(captured, event_time=None, received_at=context.received_at))
        by = f"import:{context.source_system}"
        await capture_leads(repo, uow, [(captured, by) for captured in captures])
        return rejections

    return ImportTarget(
        object="leads",
        summary="Import leads from CSV or NDJSON as a background job (same upsert as capture)",
        apply=apply,
        default_source_system="list-import",
        check_columns=_check_columns,
        row_key=capture_key,
        example_csv="external_id,captured_at,person.first_name,person.email,company.name,company.size\n"
        "row-1,2025-03-04T10:00:00Z,Ada,ada@engines.example,Analytical Engines,120\n",
        example_ndjson='{"external_id": "row-1", "captured_at": "2025-03-04T10:00:00Z", '
        '"person": {"email": "ada@engines.example"}}\n',
    )


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
