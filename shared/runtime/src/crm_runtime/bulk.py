"""Bulk actions: one request applying the same operation to many records, with a result per
item (the shape of Salesforce's composite and HubSpot's batch endpoints), shared by every
service so a client learns it once.

Each item is its own change: it is applied whole (the record and its events) or rejected with
the field and the reason, never half-applied. The items of one request are decided in order
over records read together and written together in the request's one transaction, so a
request costs a constant number of database round trips, not one per item. An id given twice
in one request is rejected at its second occurrence (two different wishes for one record are
not folded silently)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

from crm_contracts.events.common import Id
from pydantic import BaseModel, ConfigDict, Field

from .http import ApiError
from .service import ServiceRuntime
from .unit_of_work import UnitOfWork

MAX_BULK_ITEMS = 1000
ItemStatus = Literal["applied", "rejected", "unchanged"]


class BulkItem(BaseModel):
    """One record of a bulk request; subclasses add what the operation needs per item."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: Id
    expected_version: int | None = Field(
        default=None,
        ge=1,
        description="The version the caller read; another current version rejects the item",
    )


Item = TypeVar("Item", bound=BulkItem)


def items_field(description: str) -> Any:
    """The ``items`` list of a bulk request: 1 to ``MAX_BULK_ITEMS`` (more is a 422 naming ``items``)."""
    return Field(min_length=1, max_length=MAX_BULK_ITEMS, description=description)


class ItemError(BaseModel):
    field: str = Field(description="What is wrong: `id`, `expected_version`, or the item's field")
    reason: str


class ItemResult(BaseModel):
    id: str
    status: ItemStatus = Field(
        description="applied: changed, with its events; unchanged: already so, no event; "
        "rejected: nothing changed, `error` says why"
    )
    version: int | None = Field(
        description="The record's version after the item; null when it does not exist"
    )
    error: ItemError | None = None


class BulkResult(BaseModel):
    """The outcome of every item, in the order given, and the counts."""

    results: list[ItemResult]
    applied: int
    unchanged: int
    rejected: int

    @classmethod
    def of(cls, results: list[ItemResult]) -> BulkResult:
        return cls(
            results=results,
            applied=sum(r.status == "applied" for r in results),
            unchanged=sum(r.status == "unchanged" for r in results),
            rejected=sum(r.status == "rejected" for r in results),
        )


class ItemRejected(Exception):
    """Raised by an item's operation (or mapped from a domain refusal): reject just this item."""

    def __init__(self, field: str, reason: str, *, version: int | None = None) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.version = version


class HalfApplied(Exception):
    """An item was refused after it had emitted events: the whole request is undone instead."""


# (applied or not, the record's version afterwards)
ItemOutcome = tuple[bool, int]
Refusal = Callable[[Exception], ItemRejected | None]


async def apply_items(
    uow: UnitOfWork,
    items: Sequence[Item],
    apply: Callable[[Item], Awaitable[ItemOutcome]],
    *,
    refusal: Refusal | None = None,
) -> BulkResult:
    """Run ``apply`` for each item in order inside ``uow``, its events held for one outbox
    write. A domain refusal (``ItemRejected``, or what ``refusal`` maps an exception to; None
    for an unexpected one, which aborts the request) rejects only that item. The operations refuse
    before they change anything; should one refuse after emitting, ``HalfApplied`` aborts the
    whole request rather than keep part of an item."""
    results: list[ItemResult] = []
    seen: dict[str, int] = {}
    async with uow.one_outbox_write():
        for index, item in enumerate(items):
            if item.id in seen:
                results.append(_rejected(item.id, "id", f"given twice; the first is items.{seen[item.id]}"))
                continue
            seen[item.id] = index
            emitted = len(uow.emitted)
            try:
                applied, version = await apply(item)
            except Exception as exc:
                rejected = exc if isinstance(exc, ItemRejected) else refusal(exc) if refusal else None
                if rejected is None:
                    raise
                if len(uow.emitted) != emitted:
                    raise HalfApplied(f"item {item.id} was refused after it emitted events") from exc
                results.append(_rejected(item.id, rejected.field, rejected.reason, rejected.version))
                continue
            results.append(
                ItemResult(id=item.id, status="applied" if applied else "unchanged", version=version)
            )
    return BulkResult.of(results)


def _rejected(record_id: str, field: str, reason: str, version: int | None = None) -> ItemResult:
    return ItemResult(
        id=record_id, status="rejected", version=version, error=ItemError(field=field, reason=reason)
    )


BULK_DESCRIPTION = (
    f"Up to {MAX_BULK_ITEMS} items (more, or none, is a 422 naming `items`); each item is applied "
    "whole with its events or rejected with the field and the reason, never half-applied, and is "
    "answered in `results` in the order given (200 even when some are rejected). An unknown id is "
    "rejected naming `id`, an id given twice at its second occurrence, a stale `expected_version` "
    "naming `expected_version`. The request costs a constant number of database round trips."
)

BULK_ATTEMPTS = 3


async def run_bulk(
    runtime: ServiceRuntime,
    work: Callable[[UnitOfWork], Awaitable[BulkResult]],
    *,
    conflict: type[Exception],
) -> BulkResult:
    """Run a bulk action in one transaction; when a record changed between its read and its
    guarded write (``conflict``), read them all again, and after ``BULK_ATTEMPTS`` answer 409."""
    for attempt in range(1, BULK_ATTEMPTS + 1):
        try:
            return await runtime.transaction(work)
        except conflict as exc:
            if attempt == BULK_ATTEMPTS:
                raise ApiError(409, "concurrent_modification", str(exc)) from exc
    raise AssertionError("unreachable")
