"""The bulk-action shape every service shares: a result per item in the order given, a
refusal rejecting only its item, an id given twice rejected at its second occurrence, the
applied items' events in one outbox write, and a refusal after events aborting the request."""

from __future__ import annotations

from typing import Any, cast

import pytest
from crm_contracts import catalog
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import LeadQualified, LeadRating
from crm_runtime import UnitOfWork, make_event
from crm_runtime.bulk import (
    MAX_BULK_ITEMS,
    BulkItem,
    HalfApplied,
    ItemRejected,
    apply_items,
    items_field,
)
from crm_runtime.mongo import Document
from pydantic import BaseModel, ValidationError


class FakeOutbox:
    def __init__(self) -> None:
        self.writes: list[list[Document]] = []

    def entry(self, topic: str, event: Any) -> Document:
        return {"topic": topic, "id": event.id}

    async def add(self, session: Any, topic: str, event: Any) -> None:
        self.writes.append([self.entry(topic, event)])

    async def add_entries(self, session: Any, entries: list[Document]) -> None:
        self.writes.append(entries)


class Body(BaseModel):
    items: list[BulkItem] = items_field("the records")


def uow() -> tuple[UnitOfWork, FakeOutbox]:
    outbox = FakeOutbox()
    return UnitOfWork(session=cast(Any, None), outbox=cast(Any, outbox)), outbox


async def emit(work: UnitOfWork, record_id: str) -> None:
    data = LeadQualified(
        lead_id=record_id,
        rating=LeadRating.HOT,
        score=50,
        lead_source="web",
        qualified_at="2026-11-01T10:00:00Z",  # type: ignore[arg-type]
        qualified_by=Actor(id="rep-1"),
    )
    event = make_event(catalog.LEAD_QUALIFIED, data, source="/t", subject=record_id, version=2)
    await work.emit(catalog.LEAD_QUALIFIED, event)


class Refused(Exception):
    pass


async def test_each_item_gets_its_result_in_order_and_only_applied_ones_emit() -> None:
    work, outbox = uow()
    items = [BulkItem(id=i) for i in ("a", "b", "missing", "a", "c")]

    async def apply(item: BulkItem) -> tuple[bool, int]:
        if item.id == "missing":
            raise ItemRejected("id", "no such record")
        if item.id == "c":
            raise Refused("status: closed")
        if item.id == "b":
            return False, 4
        await emit(work, item.id)
        return True, 2

    def refusal(exc: Exception) -> ItemRejected | None:
        return ItemRejected("status", str(exc), version=7) if isinstance(exc, Refused) else None

    result = await apply_items(work, items, apply, refusal=refusal)
    assert [(r.id, r.status, r.version) for r in result.results] == [
        ("a", "applied", 2),
        ("b", "unchanged", 4),
        ("missing", "rejected", None),
        ("a", "rejected", None),
        ("c", "rejected", 7),
    ]
    errors = [r.error.model_dump() if r.error else None for r in result.results]
    assert errors[2] == {"field": "id", "reason": "no such record"}
    assert errors[3] == {"field": "id", "reason": "given twice; the first is items.0"}
    assert errors[4] == {"field": "status", "reason": "status: closed"}
    assert (result.applied, result.unchanged, result.rejected) == (1, 1, 3)
    assert [[e["topic"] for e in write] for write in outbox.writes] == [[catalog.LEAD_QUALIFIED.topic]]


async def test_an_unexpected_error_aborts_the_request() -> None:
    work, outbox = uow()

    async def apply(item: BulkItem) -> tuple[bool, int]:
        raise RuntimeError("database gone")

    with pytest.raises(RuntimeError):
        await apply_items(work, [BulkItem(id="a")], apply, refusal=lambda _: None)
    assert outbox.writes == []


async def test_a_refusal_after_emitting_aborts_instead_of_half_applying() -> None:
    work, outbox = uow()

    async def apply(item: BulkItem) -> tuple[bool, int]:
        await emit(work, item.id)
        raise ItemRejected("amount", "too late to refuse")

    with pytest.raises(HalfApplied):
        await apply_items(work, [BulkItem(id="a")], apply, refusal=lambda _: None)
    assert outbox.writes == []


@pytest.mark.parametrize("size", [0, MAX_BULK_ITEMS + 1])
def test_a_request_outside_the_limit_is_refused_naming_items(size: int) -> None:
    with pytest.raises(ValidationError) as refused:
        Body(items=[BulkItem(id=f"r-{n}") for n in range(size)])
    assert [error["loc"] for error in refused.value.errors()] == [("items",)]
    assert len(Body(items=[BulkItem(id=f"r-{n}") for n in range(MAX_BULK_ITEMS)]).items) == MAX_BULK_ITEMS
