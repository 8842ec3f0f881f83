"""Import jobs (in the manner of Salesforce's Bulk API 2.0 and HubSpot's imports): a CSV or
NDJSON file of any practical size is streamed in, cut into chunk documents in the service's
database, and applied in the background by a job of the ``crm_runtime.jobs`` facility, one
chunk per batch: the chunk's rows, the events they emit (outbox), their rejections and the
job's progress commit together exactly once, and a crash resumes at the next chunk.

A service declares what it imports as ``ImportTarget`` s (an object such as ``leads``, and how
to apply a chunk of its rows) and mounts ``ImportJobs.router()``:

- ``POST /imports/{object}`` answers 202 with the job as soon as the upload is stored;
- ``GET /imports/{id}``, ``GET /imports``: state, rows read / applied / rejected (``failed``
  is the deprecated alias of ``rejected``), rate, ETA;
- ``GET /imports/{id}/rejections``: the rejected rows as CSV (row, external id, column,
  value, reason);
- ``DELETE /imports/{id}`` cancels (a running job stops after the chunk in hand).

A chunk is never half-applied: rows are validated before anything is written, and a row that
still fails while applying (``RowFailed``) aborts the chunk's transaction, which runs again
without it (the row becomes a rejection).

Rows may come in any order: a row naming a record that a later row of the file may bring (a
subsidiary above its parent account) is returned by the chunk's apply as ``RowDeferred``, and
the runtime appends it, in the chunk's transaction, to a trailing chunk of the job, applied
after the rest of the file. A deferred row may wait again only while the job makes progress
(some row was applied or rejected since it was deferred): once a whole round of waiting rows
brings nothing, what they wait for can no longer arrive, and the apply rejects them
(``ImportRow.may_wait`` is false). Progress counts each row once, when it is applied or
rejected, never when it is deferred."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import orjson
from crm_contracts.envelope import utcnow
from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from pymongo import ASCENDING, DESCENDING

from .chunking import UploadChunker
from .http import ApiError
from .jobs import JOB_RETENTION_SECONDS, Job, JobFinished, JobRunner, JobStep, JobView, RedoBatch
from .mongo import Document
from .service import ServiceRuntime
from .suggestions import did_you_mean, expected_values
from .unit_of_work import UnitOfWork
from .uploads import NDJSON_TYPES, UPLOAD_TYPES, UnreadableUpload, UploadRecord, media_type

CHUNKS = "import_chunks"
REJECTIONS = "import_rejections"
JOB_PREFIX = "import-"
REJECTION_COLUMNS = ("row", "external_id", "column", "value", "reason")
SOURCE_SYSTEM = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$"
STUCK = "names a record that neither exists nor comes in the rest of the file"


@dataclass(frozen=True)
class ImportRow:
    """A readable row of the file: its number (NDJSON line, CSV record after the header) and
    its fields (CSV ``a.b`` columns nested)."""

    number: int
    fields: dict[str, Any]
    # False once waiting longer cannot help (see the module's doc): reject rather than defer.
    may_wait: bool = True

    @property
    def external_id(self) -> str | None:
        value = self.fields.get("external_id")
        return str(value) if value is not None else None


class Rejection(BaseModel):
    """Why a row was not imported: the column and value at fault (``(row)`` for the row as a
    whole) and the reason, with the closest known values where the value names something."""

    row: int
    external_id: str | None = None
    column: str = "(row)"
    value: str | None = None
    reason: str

    @classmethod
    def of(cls, row: ImportRow, column: str, value: Any, reason: str) -> Rejection:
        shown = None if value is None else (value if isinstance(value, str) else orjson.dumps(value).decode())
        return cls(row=row.number, external_id=row.external_id, column=column, value=shown, reason=reason)


def rejections_of(row: ImportRow, exc: ValidationError) -> list[Rejection]:
    """One rejection per invalid field; a value outside a closed list says what was meant."""
    rejections = []
    for error in exc.errors(include_url=False):
        column = ".".join(str(part) for part in error["loc"]) or "(row)"
        reason = error["msg"]
        expected = (error.get("ctx") or {}).get("expected")
        if error["type"] in ("literal_error", "enum") and isinstance(expected, str):
            reason += did_you_mean(str(error.get("input")), expected_values(expected))
        value = error.get("input") if error["type"] != "missing" else None
        rejections.append(Rejection.of(row, column, None if isinstance(value, dict) else value, reason))
    return rejections


class RowFailed(Exception):
    """A row that turned out not to be applicable while its chunk was being applied: the chunk
    is redone without it and it is rejected for this reason."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.reason)
        self.rejection = rejection


@dataclass(frozen=True)
class RowDeferred:
    """The row names a record that a later row of the file may bring: apply it again after the
    rest of the file. Only for a row whose ``may_wait`` is true, and nothing may have been
    written for it."""

    row: ImportRow


@dataclass(frozen=True)
class ImportContext:
    job_id: str
    source_system: str
    received_at: datetime  # when the upload was accepted: the time of receipt of its rows


ApplyChunk = Callable[
    [list[ImportRow], ImportContext, UnitOfWork], Awaitable[Sequence[Rejection | RowDeferred]]
]


def external_id_key(fields: dict[str, Any], _source_system: str) -> str | None:
    value = fields.get("external_id")
    return str(value) if value is not None else None


@dataclass(frozen=True)
class ImportTarget:
    """One object a service imports. ``apply`` applies a chunk's readable rows in the given
    unit of work and returns the rows it refused (it must not have written anything for
    them) and those it defers (``RowDeferred``); it may raise ``RowFailed`` for a row found bad
    only while writing. ``row_key`` names a row's record (two rows with one key: the later one
    is a duplicate in the file)."""

    object: str
    summary: str
    apply: ApplyChunk
    default_source_system: str = "import"
    check_columns: Callable[[list[str]], None] | None = None
    row_key: Callable[[dict[str, Any], str], str | None] = external_id_key
    example_csv: str = ""
    example_ndjson: str = ""

    @property
    def kind(self) -> str:
        return f"{JOB_PREFIX}{self.object}"


class ImportParams(BaseModel):
    """What the job knows of its file (stored as the job's params)."""

    object: str
    source_system: str
    format: str
    file_rows: int
    file_bytes: int
    chunks: int
    columns: list[str] | None = None


class ImportView(JobView):
    """An import job: ``processed`` counts the rows read, ``applied`` those imported (created,
    updated or already up to date), ``rejected`` those refused (``failed``: its deprecated alias)."""

    object: str = Field(description="What the file holds, e.g. leads")
    source_system: str = Field(description="The system the rows come from (their external ids' namespace)")
    format: str = Field(description="csv or ndjson")
    file_rows: int = Field(description="Rows in the file (blank lines not counted)")
    file_bytes: int
    rejections: str = Field(description="Where the rejected rows are, as CSV")

    @classmethod
    def of_import(cls, job: Job) -> ImportView:
        params = ImportParams.model_validate(job.params)
        return cls.model_validate(
            JobView.of(job).model_dump()
            | params.model_dump(include={"object", "source_system", "format", "file_rows", "file_bytes"})
            | {"rejections": f"/imports/{job.id}/rejections"}
        )


def _chunk_id(job_id: str, seq: int) -> str:
    return f"{job_id}:{seq:07d}"


def _stored_row(record: UploadRecord, problem: Rejection | None) -> Document:
    doc: Document = {"n": record.number}
    if record.fields is not None:
        # As JSON text: a row's keys are the file's, and need not be valid field names.
        doc["f"] = orjson.dumps(record.fields)
    if problem is not None:
        doc["p"] = problem.model_dump(exclude={"row"})
    return doc


class ImportJobs:
    """The service's import jobs for its ``targets``."""

    def __init__(self, runtime: ServiceRuntime, targets: Iterable[ImportTarget]) -> None:
        self._runtime = runtime
        self._jobs: JobRunner = runtime.jobs
        self._chunks = runtime.db[CHUNKS]
        self._rejections = runtime.db[REJECTIONS]
        self._chunk_rows = runtime.settings.import_chunk_rows
        self.targets = {target.object: target for target in targets}
        # Rows found bad while applying, left out when their chunk is redone (a crash forgets
        # them; the redone chunk finds them again).
        self._left_out: dict[str, dict[int, Rejection]] = {}
        for target in self.targets.values():
            self._jobs.register(target.kind, self._step(target), on_cancel=self._drop_chunks)
            runtime.streamed_upload_paths.add(f"/imports/{target.object}")
        runtime.on_startup(self.ensure_indexes)

    async def ensure_indexes(self) -> None:
        await self._chunks.create_index("created_at", expireAfterSeconds=JOB_RETENTION_SECONDS)
        await self._rejections.create_index([("job_id", ASCENDING), ("row", ASCENDING)])
        await self._rejections.create_index("created_at", expireAfterSeconds=JOB_RETENTION_SECONDS)

    # -- receiving a file -------------------------------------------------------------------
    async def receive(
        self, target: ImportTarget, body: AsyncIterator[bytes], content_type: str, source_system: str
    ) -> Job:
        """Store the streamed file as chunks and queue its job. Raises UnreadableUpload (and
        stores nothing) when the file as a whole cannot be read."""
        job_id = str(uuid.uuid4())
        chunker = UploadChunker(content_type, chunk_rows=self._chunk_rows, check_columns=target.check_columns)
        seen: dict[str, int] = {}
        stored = 0

        async def store(chunks: list[list[UploadRecord]]) -> None:
            nonlocal stored
            for records in chunks:
                rows = [
                    _stored_row(record, self._duplicate(target, record, source_system, seen))
                    for record in records
                ]
                await self._chunks.insert_one(
                    {"_id": _chunk_id(job_id, stored), "job_id": job_id, "rows": rows, "created_at": utcnow()}
                )
                stored += 1

        try:
            async for piece in body:
                await store(chunker.feed(piece))
            await store(chunker.finish())
        except BaseException:  # unreadable, too large (413), the client gone, cancelled
            await asyncio.shield(self._chunks.delete_many({"job_id": job_id}))
            raise
        params = ImportParams(
            object=target.object,
            source_system=source_system,
            format=chunker.format,
            file_rows=chunker.rows,
            file_bytes=chunker.bytes_read,
            chunks=stored,
            columns=chunker.columns,
        )
        job, _ = await self._jobs.submit(target.kind, params.model_dump(), job_id=job_id)
        return job

    @staticmethod
    def _duplicate(
        target: ImportTarget, record: UploadRecord, source_system: str, seen: dict[str, int]
    ) -> Rejection | None:
        """An unreadable row's problem, or the rejection of a row whose record came before."""
        if record.fields is None:
            problem = record.problem
            return Rejection(row=record.number, reason=problem.reason if problem else "unreadable")
        try:
            key = target.row_key(record.fields, source_system)
        except (KeyError, TypeError, ValueError):
            key = None  # the row's validation says what is wrong with it
        if key is None:
            return None
        first = seen.setdefault(key, record.number)
        if first == record.number:
            return None
        row = ImportRow(record.number, record.fields)
        return Rejection.of(
            row,
            "external_id",
            row.external_id,
            f"the file has this record already at row {first}; only that row is imported",
        )

    # -- working a job ----------------------------------------------------------------------
    def _step(self, target: ImportTarget) -> Callable[[Job, UnitOfWork], Awaitable[JobStep]]:
        async def step(job: Job, uow: UnitOfWork) -> JobStep:
            params = ImportParams.model_validate(job.params)
            seq = int(job.position or 0)
            chunk = await self._chunks.find_one({"_id": _chunk_id(job.id, seq)}, session=uow.session)
            if chunk is None:
                return JobStep(processed=0, position=seq, total=params.file_rows, done=True)
            left_out = self._left_out.setdefault(chunk["_id"], {})
            rejections: list[Rejection] = []
            rows: list[ImportRow] = []
            stored_rows: dict[int, Document] = {}
            for stored in chunk["rows"]:
                number = stored["n"]
                if "p" in stored:
                    rejections.append(Rejection(row=number, **stored["p"]))
                elif number in left_out:
                    rejections.append(left_out[number])
                else:
                    # A deferred row waits again only if some row has ended since it was deferred.
                    may_wait = "w" not in stored or job.processed > stored["w"]
                    rows.append(ImportRow(number, orjson.loads(stored["f"]), may_wait=may_wait))
                    stored_rows[number] = stored
            deferred: list[Document] = []
            try:
                for outcome in await target.apply(
                    rows, ImportContext(job.id, params.source_system, job.created_at), uow
                ):
                    if isinstance(outcome, Rejection):
                        rejections.append(outcome)
                    elif outcome.row.may_wait:
                        deferred.append(stored_rows[outcome.row.number])
                    else:  # the apply should have rejected it: waiting longer cannot help
                        rejections.append(Rejection.of(outcome.row, "(row)", None, STUCK))
            except RowFailed as exc:
                left_out[exc.rejection.row] = exc.rejection
                raise RedoBatch(f"row {exc.rejection.row} left out") from exc
            rejected = {r.row for r in rejections}
            deferred = [row for row in deferred if row["n"] not in rejected]
            if rejections:
                now = utcnow()
                await self._rejections.insert_many(
                    [{"job_id": job.id, "created_at": now, **r.model_dump()} for r in rejections],
                    session=uow.session,
                )
            ended = len(chunk["rows"]) - len(deferred)
            # The file's own chunks come first, then the trailing ones of deferred rows.
            last = await self._last_chunk(job.id, uow) if deferred or seq + 1 >= params.chunks else None
            if deferred:
                assert last is not None
                stamp = job.processed + ended
                await self._chunks.insert_one(
                    {
                        "_id": _chunk_id(job.id, max(seq, last) + 1),
                        "job_id": job.id,
                        "rows": [{**row, "w": stamp} for row in deferred],
                        "created_at": utcnow(),
                    },
                    session=uow.session,
                )
            await self._chunks.delete_one({"_id": chunk["_id"]}, session=uow.session)
            self._left_out.pop(chunk["_id"], None)
            return JobStep(
                processed=ended,
                applied=ended - len(rejected),
                failed=len(rejected),
                position=seq + 1,
                total=params.file_rows,
                done=not deferred and last is not None and last <= seq,
            )

        return step

    async def _last_chunk(self, job_id: str, uow: UnitOfWork) -> int:
        """The number of the job's last chunk still to apply (trailing chunks of deferred rows
        come after the file's own); -1 when none is left."""
        last = await self._chunks.find_one(
            {"_id": {"$gte": _chunk_id(job_id, 0), "$lt": f"{job_id};"}},
            {"_id": 1},
            sort=[("_id", DESCENDING)],
            session=uow.session,
        )
        return int(str(last["_id"]).rsplit(":", 1)[1]) if last is not None else -1

    async def _drop_chunks(self, job: Job, uow: UnitOfWork) -> JobStep:
        """A cancelled import's rest of the file goes."""
        await self._chunks.delete_many({"job_id": job.id}, session=uow.session)
        return JobStep(processed=0)

    # -- reading ------------------------------------------------------------------------------
    async def get(self, job_id: str) -> Job | None:
        job = await self._jobs.get(job_id)
        if job is None or not job.kind.startswith(JOB_PREFIX):
            return None
        return job

    async def recent(self, limit: int) -> list[Job]:
        jobs = [
            job for target in self.targets.values() for job in await self._jobs.recent(target.kind, limit)
        ]
        jobs.sort(key=lambda job: job.created_at, reverse=True)
        return jobs[:limit]

    async def rejections(self, job_id: str) -> AsyncIterator[Rejection]:
        cursor = self._rejections.find({"job_id": job_id}, sort=[("row", ASCENDING), ("_id", ASCENDING)])
        async for doc in cursor:
            yield Rejection.model_validate(doc)

    async def cancel(self, job_id: str) -> Job | None:
        job = await self.get(job_id)
        if job is None:
            return None
        cancelled = await self._jobs.cancel(job_id, job.kind)
        if cancelled is not None and cancelled.finished:
            await self._chunks.delete_many({"job_id": job_id})  # a running one's: on_cancel
        return cancelled

    # -- HTTP ---------------------------------------------------------------------------------
    def router(self) -> APIRouter:
        router = APIRouter(prefix="/imports", tags=["imports"])
        auth = self._runtime.auth
        read, write = [Depends(auth.require("read"))], [Depends(auth.require("write"))]
        not_found: dict[int | str, dict[str, Any]] = {404: {"description": "No such import"}}

        def found(job: Job | None, job_id: uuid.UUID) -> ImportView:
            if job is None:
                raise ApiError(404, "not_found", f"import {job_id} does not exist", field="import_id")
            return ImportView.of_import(job)

        for target in self.targets.values():
            self._post_route(router, target, write)

        @router.get("", dependencies=read, summary="The latest imports, newest first")
        async def list_imports(limit: Annotated[int, Query(ge=1, le=100)] = 20) -> list[ImportView]:
            return [ImportView.of_import(job) for job in await self.recent(limit)]

        @router.get(
            "/{import_id}",
            dependencies=read,
            responses=not_found,
            summary="An import's state and progress: rows read, applied and rejected, rate, time left",
        )
        async def get_import(import_id: uuid.UUID) -> ImportView:
            return found(await self.get(str(import_id)), import_id)

        @router.get(
            "/{import_id}/rejections",
            dependencies=read,
            responses={
                200: {"content": {"text/csv": {}}, "description": "One line per problem"},
                **not_found,
            },
            response_class=StreamingResponse,
            summary="The rejected rows as CSV: row, external_id, column, value, reason",
        )
        async def get_rejections(import_id: uuid.UUID) -> StreamingResponse:
            found(await self.get(str(import_id)), import_id)
            return StreamingResponse(
                self._rejections_csv(str(import_id)), media_type="text/csv; charset=utf-8"
            )

        @router.delete(
            "/{import_id}",
            dependencies=write,
            responses={409: {"description": "The import has ended already"}, **not_found},
            summary="Cancel an import (a running one stops after the chunk in hand)",
            description="Rows already imported stay; the rest of the file is dropped.",
        )
        async def cancel_import(import_id: uuid.UUID) -> ImportView:
            try:
                job = await self.cancel(str(import_id))
            except JobFinished as exc:
                raise ApiError(409, "import_finished", str(exc), field="import_id") from exc
            return found(job, import_id)

        return router

    def _post_route(self, router: APIRouter, target: ImportTarget, dependencies: list[Any]) -> None:
        body = {
            "requestBody": {
                "required": True,
                "content": {
                    "text/csv": {"schema": {"type": "string"}, "example": target.example_csv},
                    **{
                        kind: {"schema": {"type": "string"}, "example": target.example_ndjson}
                        for kind in NDJSON_TYPES
                    },
                },
            }
        }

        @router.post(
            f"/{target.object}",
            status_code=status.HTTP_202_ACCEPTED,
            dependencies=dependencies,
            openapi_extra=body,
            responses={
                202: {"description": "The file is stored; the import job works it (follow Location)"},
                413: {"description": "The file exceeds CRM_MAX_IMPORT_BYTES"},
                415: {"description": "Not CSV or NDJSON"},
                422: {"description": "The file as a whole cannot be read (not UTF-8, bad CSV header)"},
            },
            summary=target.summary,
            name=f"import_{target.object}",
        )
        async def start_import(
            request: Request,
            response: Response,
            source_system: Annotated[
                str,
                Query(
                    pattern=SOURCE_SYSTEM, description="The system the rows come from, unless a row names one"
                ),
            ] = target.default_source_system,
        ) -> ImportView:
            content_type = request.headers.get("content-type", "")
            if media_type(content_type) not in UPLOAD_TYPES:
                raise ApiError(415, "unsupported_media_type", f"send one of {', '.join(UPLOAD_TYPES)}")
            try:
                job = await self.receive(target, request.stream(), content_type, source_system)
            except UnreadableUpload as exc:
                raise ApiError(422, "unreadable_upload", str(exc), field=exc.field) from exc
            response.headers["Location"] = f"/imports/{job.id}"
            return ImportView.of_import(job)

    async def _rejections_csv(self, job_id: str) -> AsyncIterator[bytes]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(REJECTION_COLUMNS)
        async for rejection in self.rejections(job_id):
            writer.writerow(
                [
                    rejection.row,
                    rejection.external_id or "",
                    rejection.column,
                    rejection.value or "",
                    rejection.reason,
                ]
            )
            if buffer.tell() > 64 * 1024:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue().encode()


__all__ = [
    "ImportContext",
    "ImportJobs",
    "ImportRow",
    "ImportTarget",
    "ImportView",
    "Rejection",
    "RowDeferred",
    "RowFailed",
    "rejections_of",
]
