"""Import jobs on the real database, with a small target kind: a file streamed in pieces is
stored as chunks and applied a chunk per transaction to its end; unreadable rows, invalid rows,
rows naming something unknown (with what they may have meant) and rows repeating an earlier
row's external id are each rejected with the column and the reason; a row that fails only
while its chunk is being written is left out and the chunk redone, so none of its writes stay
and every other row is applied once. Rows naming a row later in the file wait for it (deferred
to the end of the job) and are applied after it; rows waiting for what never comes are rejected
once waiting brings nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from crm_localinfra.testing import eventually, isolation_key, service_env
from crm_runtime import ServiceRuntime, ServiceSettings, UnitOfWork
from crm_runtime.imports import (
    STUCK,
    ImportContext,
    ImportJobs,
    ImportRow,
    ImportTarget,
    Rejection,
    RowDeferred,
    RowFailed,
)
from crm_runtime.suggestions import unknown_reason

pytestmark = pytest.mark.integration

COLOURS = ["red", "green", "blue"]
Outcome = Rejection | RowDeferred


async def apply_notes(rows: list[ImportRow], context: ImportContext, uow: UnitOfWork) -> list[Rejection]:
    """Validates first (a colour from the list), then writes each row; a row saying
    ``fail=apply`` fails after its own write and those of the rows before it."""
    rejections, valid = [], []
    for row in rows:
        colour = str(row.fields.get("colour", ""))
        if colour not in COLOURS:
            rejections.append(Rejection.of(row, "colour", colour, unknown_reason("colour", colour, COLOURS)))
        else:
            valid.append(row)
    notes = uow.session.client[context.job_id.replace("-", "")[:20]]["notes"]
    for row in valid:
        await notes.insert_one({"_id": row.external_id, "row": row.number}, session=uow.session)
        if row.fields.get("fail") == "apply":  # its own write is made, then it fails
            raise RowFailed(Rejection.of(row, "fail", "apply", "refused while writing"))
    return rejections


NOTES = ImportTarget(object="notes", summary="notes", apply=apply_notes)


@pytest.fixture
async def runtime(infra: Any) -> AsyncIterator[tuple[ServiceRuntime, ImportJobs]]:
    settings = ServiceSettings(
        service_name="imports",
        import_chunk_rows=3,
        **service_env(infra, "imports", isolation=isolation_key()),
    )
    runtime = ServiceRuntime(settings)
    imports = ImportJobs(runtime, [NOTES])
    await runtime.jobs.ensure_indexes()
    await imports.ensure_indexes()
    runtime.jobs.start()
    yield runtime, imports
    await runtime.jobs.stop()
    await runtime.client.close()


async def pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


FILE = (
    b"external_id,colour,fail\n"
    b"n1,red,\n"
    b"n2,gren,\n"  # unknown colour: did you mean green
    b"n3,blue,apply\n"  # fails while written: its chunk is redone without it
    b"n4,green,\n"
    b"n1,blue,\n"  # the file had n1 already
    b"n5,red,,extra\n"  # unreadable
    b'"n6",red,\n'
)


async def test_every_bad_row_is_rejected_with_column_and_reason_and_the_rest_applied_once(
    runtime: tuple[ServiceRuntime, ImportJobs],
) -> None:
    service, imports = runtime
    job = await imports.receive(NOTES, pieces(FILE, 5), "text/csv", "legacy")
    assert job.params["file_rows"] == 7 and job.params["chunks"] == 3

    async def ended() -> Any:
        current = await imports.get(job.id)
        return current if current is not None and current.finished else None

    done = await eventually(ended)
    assert (done.state.value, done.processed, done.applied, done.failed) == ("done", 7, 3, 4)
    rejections = {r.row: r async for r in imports.rejections(job.id)}
    assert sorted(rejections) == [2, 3, 5, 6]
    assert (rejections[2].column, rejections[2].value) == ("colour", "gren")
    assert rejections[2].reason == "unknown colour 'gren'; did you mean 'green'?"
    assert (rejections[3].column, rejections[3].reason) == ("fail", "refused while writing")
    assert rejections[5].column == "external_id" and "at row 1" in rejections[5].reason
    assert rejections[6].reason == "4 values for 3 columns"
    notes = service.client[job.id.replace("-", "")[:20]]["notes"]
    stored = await notes.find({}, sort=[("_id", 1)]).to_list()
    assert [(doc["_id"], doc["row"]) for doc in stored] == [("n1", 1), ("n4", 4), ("n6", 7)]
    assert await service.db["import_chunks"].count_documents({"job_id": job.id}) == 0
    await service.client.drop_database(job.id.replace("-", "")[:20])


async def apply_parts(rows: list[ImportRow], context: ImportContext, uow: UnitOfWork) -> list[Outcome]:
    """A part names its parent part, which must be stored first (rows in file order, no
    reordering within a chunk): a missing parent defers the row while it may wait, then
    rejects it. A part whose parent is ``*`` is deferred whatever it is told."""
    parts = uow.session.client[context.job_id.replace("-", "")[:20]]["parts"]
    outcomes: list[Outcome] = []
    for row in rows:
        parent = row.fields.get("parent")
        if parent == "*":
            outcomes.append(RowDeferred(row))
        elif parent and await parts.find_one({"_id": parent}, session=uow.session) is None:
            outcomes.append(
                RowDeferred(row) if row.may_wait else Rejection.of(row, "parent", parent, "no such part")
            )
        else:  # a second insert of one part fails on its _id: each row is applied once
            await parts.insert_one({"_id": row.external_id, "row": row.number}, session=uow.session)
    return outcomes


PARTS = ImportTarget(object="parts", summary="parts", apply=apply_parts)

PARTS_FILE = (
    b"external_id,parent\n"
    b"g,c\n"  # grandchild, child, parent: in reverse order across two chunks
    b"c,p\n"
    b"x,nowhere\n"  # its parent is nowhere in the file
    b"p,\n"
    b"a,b\n"  # a and b name each other: a loop across chunks
    b"k,\n"
    b"b,a\n"
    b"s,*\n"  # deferred by its target even when waiting cannot help
)


async def test_rows_naming_a_later_row_are_applied_after_it_and_rows_waiting_in_vain_rejected(
    infra: Any,
) -> None:
    settings = ServiceSettings(
        service_name="imports",
        import_chunk_rows=3,
        **service_env(infra, "imports", isolation=isolation_key()),
    )
    service = ServiceRuntime(settings)
    imports = ImportJobs(service, [PARTS])
    await service.jobs.ensure_indexes()
    await imports.ensure_indexes()
    service.jobs.start()
    try:
        job = await imports.receive(PARTS, pieces(PARTS_FILE, 7), "text/csv", "legacy")
        assert job.params["chunks"] == 3

        async def ended() -> Any:
            current = await imports.get(job.id)
            return current if current is not None and current.finished else None

        done = await eventually(ended)
        # Each row counted once, when it ended, not each time it was deferred.
        assert (done.state.value, done.processed, done.applied, done.failed) == ("done", 8, 4, 4)
        rejections = {r.row: r async for r in imports.rejections(job.id)}
        assert sorted(rejections) == [3, 5, 7, 8]
        assert (rejections[3].column, rejections[3].value, rejections[3].reason) == (
            "parent",
            "nowhere",
            "no such part",
        )
        assert rejections[8].reason == STUCK
        parts = service.client[job.id.replace("-", "")[:20]]["parts"]
        stored = await parts.find({}, sort=[("row", 1)]).to_list()
        assert [doc["_id"] for doc in stored] == ["g", "c", "p", "k"]
        assert await service.db["import_chunks"].count_documents({"job_id": job.id}) == 0
        await service.client.drop_database(job.id.replace("-", "")[:20])
    finally:
        await service.jobs.stop()
        await service.client.close()
