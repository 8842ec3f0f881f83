"""What the leads service does, shared by its HTTP routes and its Kafka handlers. Each use
case runs inside one unit of work: the leads it changes and the events it emits commit
together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from crm_contracts import catalog
from crm_contracts.catalog import EventSpec
from crm_contracts.envelope import CloudEvent, utcnow
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import (
    LeadCaptured,
    LeadCreated,
    LeadDisqualified,
    LeadMerged,
    LeadQualified,
    LeadRating,
    LeadStatus,
    LeadUpdated,
)
from crm_contracts.events.picklists import PicklistName, PicklistValue, UnknownValues
from crm_runtime import UnitOfWork, make_event
from crm_runtime.jobs import Job, JobRunner, JobStep, Step

from .batch_store import BatchLeads
from .domain import (
    OPEN_STATUSES,
    ConversionRequest,
    DuplicateLink,
    Lead,
    LeadRuleViolation,
    shared_keys,
    timed_capture,
)
from .picklists import Picklist
from .repository import ConcurrentModification, LeadRepository, LeadStore
from .scoring import ScoringRules, ScoringRuleSet

log = logging.getLogger(__name__)

SOURCE = "/crm/leads"
SCORING_ACTOR = "system:scoring"
# Merges can chain (a survivor merged later into a third lead); a capture follows the chain.
MAX_MERGE_CHAIN = 10


class LeadNotFound(Exception):
    def __init__(self, lead_id: str, field: str = "lead_id") -> None:
        super().__init__(lead_id)
        self.field = field


def now_ms() -> datetime:
    """Now at the precision MongoDB stores, so what a use case returns equals what it stored."""
    now = utcnow()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# -- events -------------------------------------------------------------------------------------
async def _created(uow: UnitOfWork, lead: Lead) -> None:
    event = make_event(
        catalog.LEAD_CREATED,
        LeadCreated(lead=lead.snapshot()),
        source=SOURCE,
        subject=lead.id,
        version=lead.version,
        time=lead.captured_at,
    )
    await uow.emit(catalog.LEAD_CREATED, event)


def _updated_event(lead: Lead, changed: list[str]) -> CloudEvent[LeadUpdated]:
    return make_event(
        catalog.LEAD_UPDATED,
        LeadUpdated(lead=lead.snapshot(), changed_fields=sorted(set(changed))),
        source=SOURCE,
        subject=lead.id,
        version=lead.version,
        time=lead.updated_at,
    )


async def _updated(uow: UnitOfWork, lead: Lead, changed: list[str]) -> None:
    await uow.emit(catalog.LEAD_UPDATED, _updated_event(lead, changed))


async def _save(store: LeadStore, uow: UnitOfWork, lead: Lead, expected: int, changed: list[str]) -> None:
    await store.update(lead, expected, uow.session)
    await _updated(uow, lead, changed)


# -- capture -------------------------------------------------------------------------------------
@dataclass
class CaptureResult:
    """``lead`` is the lead as it now stands: the survivor when the capture key's own lead
    (``lead_id``) was merged into another one."""

    lead: Lead
    lead_id: str
    outcome: Literal["created", "updated", "unchanged"]
    changed_fields: list[str] = field(default_factory=list)


async def capture_lead(
    store: LeadStore,
    uow: UnitOfWork,
    captured: LeadCaptured,
    *,
    by: str,
    now: datetime | None = None,
    event_time: datetime | None = None,
) -> CaptureResult:
    """Create the lead, or update it when the capturing system sends it again. The one path
    for ``lead.captured``, the HTTP capture endpoints and bulk imports. Its source and origin
    are folded into the organisation's picklists (``UnknownPicklistValue`` if refused); a
    capture without ``captured_at`` takes ``event_time`` (its event's), else ``now`` (its receipt)."""
    now = now or now_ms()
    captured = timed_capture(captured, event_time=event_time, received_at=now)
    rules = await store.scoring_rules(uow.session)
    picklists = await store.picklists(uow.session)
    candidate = Lead.capture(captured, rules, now=now, by=by, picklists=picklists)
    existing = await store.get(candidate.id, uow.session)
    if existing is None:
        await _refresh_duplicates(store, uow, candidate, now=now, by=by, record=False)
        await store.add(candidate, uow.session)
        await _created(uow, candidate)
        return CaptureResult(candidate, candidate.id, "created")

    expected = existing.version
    keys_before = (existing.match_keys, existing.captured_at)
    changed = existing.recapture(captured, rules, now=now, by=by, picklists=picklists)
    if not changed:
        survivor = await _survivor_of(store, uow, existing)
        return CaptureResult(survivor, existing.id, "unchanged")
    if existing.status is LeadStatus.MERGED:
        # The merged lead keeps its own capture record (so resends still converge on it), and
        # the survivor takes what the capture brings.
        await _save(store, uow, existing, expected, changed)
        survivor = await _survivor_of(store, uow, existing)
        survivor_expected = survivor.version
        survivor_keys = (survivor.match_keys, survivor.captured_at)
        absorbed = survivor.absorb_capture(
            captured, rules, now=now, by=by, for_lead=existing.id, picklists=picklists
        )
        if absorbed:
            if (survivor.match_keys, survivor.captured_at) != survivor_keys:
                absorbed += await _refresh_duplicates(store, uow, survivor, now=now, by=by, record=False)
            await _save(store, uow, survivor, survivor_expected, absorbed)
        return CaptureResult(survivor, existing.id, "updated", absorbed)
    if (existing.match_keys, existing.captured_at) != keys_before:
        changed += await _refresh_duplicates(store, uow, existing, now=now, by=by, record=False)
    await _save(store, uow, existing, expected, changed)
    return CaptureResult(existing, existing.id, "updated", changed)


async def capture_leads(
    repo: LeadRepository,
    uow: UnitOfWork,
    captures: Sequence[tuple[LeadCaptured, str]],
    *,
    each: Callable[[int], AbstractContextManager[object]] = lambda _: contextlib.nullcontext(),
) -> list[CaptureResult]:
    """``capture_lead`` for each of ``captures`` (capture, by whom) in order, with a constant
    number of database round trips: the leads they can touch are read with a few ``$in``
    queries, the captures are decided in memory by ``capture_lead`` itself (so duplicates
    within the batch are linked as one-by-one captures would link them), and the batch is
    stored with one insert, one version-guarded bulk write and one outbox write. ``each(i)``
    is entered around the i-th capture (the consumer's per-event trace). Captures not yet
    timed (``timed_capture``) without ``captured_at`` take the batch's receipt. A lead changed by
    someone else meanwhile raises ``ConcurrentModification`` and nothing is written."""
    received_at = now_ms()
    timed = [
        (timed_capture(captured, event_time=None, received_at=received_at), by) for captured, by in captures
    ]
    store = await BatchLeads.load(repo, uow.session, [captured for captured, _ in timed])
    results = []
    async with uow.one_outbox_write():
        for index, (captured, by) in enumerate(timed):
            with each(index):
                results.append(await capture_lead(store, uow, captured, by=by))
        await store.save()
    return results


async def _survivor_of(store: LeadStore, uow: UnitOfWork, lead: Lead) -> Lead:
    current = lead
    for _ in range(MAX_MERGE_CHAIN):
        if current.status is not LeadStatus.MERGED or current.merged_into is None:
            return current
        survivor = await store.get(current.merged_into, uow.session)
        if survivor is None:
            return current
        current = survivor
    return current


async def _refresh_duplicates(
    store: LeadStore,
    uow: UnitOfWork,
    lead: Lead,
    *,
    now: datetime,
    by: str,
    record: bool,
    in_hand: dict[str, Lead] | None = None,
) -> list[str]:
    """Link ``lead`` to the stored leads sharing a duplicate key with it, and keep the other
    side of every link in step (so each of two duplicates shows the other, whichever arrived
    first). Leads ``in_hand`` are changed in memory only; the caller saves them. Returns the
    fields of ``lead`` that changed."""
    in_hand = {lead_id: held for lead_id, held in (in_hand or {}).items() if lead_id != lead.id}
    stored = [match for match in await store.find_matches(lead, uow.session) if match.id not in in_hand]
    others: dict[str, Lead] = {match.id: match for match in stored}
    others.update(in_hand)
    for link in lead.possible_duplicates:
        if link.lead_id not in others:
            linked = await store.get(link.lead_id, uow.session)
            if linked is not None:
                others[linked.id] = linked
    keys_by_id = {other.id: shared_keys(lead.match_keys, other.match_keys) for other in others.values()}
    relinked = lead.link_duplicates(
        (
            DuplicateLink(lead_id=other.id, keys=keys_by_id[other.id], captured_at=other.captured_at)
            for other in others.values()
            if keys_by_id[other.id]
        ),
        now=now,
        by=by,
        record=record,
    )
    for other in others.values():
        links = [link for link in other.possible_duplicates if link.lead_id != lead.id]
        if keys_by_id[other.id]:
            links.append(
                DuplicateLink(lead_id=lead.id, keys=keys_by_id[other.id], captured_at=lead.captured_at)
            )
        expected = other.version
        if other.link_duplicates(links, now=now, by=by) and other.id not in in_hand:
            await _save(store, uow, other, expected, ["possible_duplicates", "duplicate_of"])
    return ["possible_duplicates", "duplicate_of"] if relinked else []


# -- lifecycle and qualification -----------------------------------------------------------------
async def load(store: LeadStore, uow: UnitOfWork, lead_id: str, field: str = "lead_id") -> Lead:
    lead = await store.get(lead_id, uow.session)
    if lead is None:
        raise LeadNotFound(lead_id, field)
    return lead


async def change_status(
    store: LeadStore, uow: UnitOfWork, lead_id: str, status: LeadStatus, by: Actor, note: str | None
) -> Lead:
    """A rep works or nurtures a lead; the history records who and when."""
    lead = await load(store, uow, lead_id)
    expected = lead.version
    if lead.work(status, now=now_ms(), by=by.id, note=note):
        await _save(store, uow, lead, expected, ["status"])
    return lead


async def rate_lead(
    store: LeadStore, uow: UnitOfWork, lead_id: str, rating: LeadRating | None, by: Actor
) -> Lead:
    """Set or clear the rep's rating, which overrides the score's."""
    lead = await load(store, uow, lead_id)
    expected = lead.version
    if lead.set_manual_rating(rating, now=now_ms(), by=by.id):
        await _save(store, uow, lead, expected, ["rating"])
    return lead


async def assign_lead_owner(
    store: LeadStore, uow: UnitOfWork, lead_id: str, owner_id: str | None, by: Actor
) -> Lead:
    """Give the lead to a rep (None: unassign); announced as ``lead.updated`` of ``owner_id``."""
    lead = await load(store, uow, lead_id)
    expected = lead.version
    if lead.assign_owner(owner_id, now=now_ms(), by=by.id):
        await _save(store, uow, lead, expected, ["owner_id"])
    return lead


async def qualify_lead(
    store: LeadStore, uow: UnitOfWork, lead_id: str, rating: LeadRating | None, by: Actor
) -> Lead:
    lead = await load(store, uow, lead_id)
    expected = lead.version
    now = now_ms()
    if not lead.qualify(rating, now=now, by=by.id):
        return lead
    await store.update(lead, expected, uow.session)
    assert lead.rating is not None  # a qualified lead always has the score's rating at least
    data = LeadQualified(
        lead_id=lead.id,
        rating=lead.rating,
        score=lead.score,
        lead_source=lead.lead_source,
        campaign_id=lead.campaign_id,
        qualified_at=now,
        qualified_by=by,
    )
    await uow.emit(
        catalog.LEAD_QUALIFIED,
        make_event(
            catalog.LEAD_QUALIFIED, data, source=SOURCE, subject=lead.id, version=lead.version, time=now
        ),
    )
    return lead


async def disqualify_lead(store: LeadStore, uow: UnitOfWork, lead_id: str, reason: str, by: Actor) -> Lead:
    lead = await load(store, uow, lead_id)
    expected = lead.version
    now = now_ms()
    lead.disqualify(reason, now=now, by=by.id)
    await store.update(lead, expected, uow.session)
    data = LeadDisqualified(
        lead_id=lead.id,
        reason=reason,
        lead_source=lead.lead_source,
        campaign_id=lead.campaign_id,
        disqualified_at=now,
        disqualified_by=by,
    )
    await uow.emit(
        catalog.LEAD_DISQUALIFIED,
        make_event(
            catalog.LEAD_DISQUALIFIED, data, source=SOURCE, subject=lead.id, version=lead.version, time=now
        ),
    )
    return lead


async def convert_lead(
    store: LeadStore,
    uow: UnitOfWork,
    lead_id: str,
    request: ConversionRequest,
    by: Actor,
    *,
    company_currency: str,
) -> Lead:
    lead = await load(store, uow, lead_id)
    expected = lead.version
    now = now_ms()
    converted = lead.convert(request, now=now, by=by, company_currency=company_currency)
    await store.update(lead, expected, uow.session)
    await uow.emit(
        catalog.LEAD_CONVERTED,
        make_event(
            catalog.LEAD_CONVERTED, converted, source=SOURCE, subject=lead.id, version=lead.version, time=now
        ),
    )
    return lead


# -- merge ---------------------------------------------------------------------------------------
async def merge_leads(
    store: LeadStore, uow: UnitOfWork, survivor_id: str, duplicate_id: str, by: Actor
) -> Lead:
    """Merge ``duplicate_id`` into ``survivor_id``: the survivor takes the missing fields and
    both histories, the duplicate becomes ``merged`` pointing at it; ``lead.merged`` plus a
    ``lead.updated`` for each of the two."""
    if survivor_id == duplicate_id:
        raise LeadRuleViolation("duplicate_id: a lead cannot be merged into itself", field="duplicate_id")
    survivor = await load(store, uow, survivor_id)
    duplicate = await load(store, uow, duplicate_id, field="duplicate_id")
    survivor_expected, duplicate_expected = survivor.version, duplicate.version
    now = now_ms()
    rules = await store.scoring_rules(uow.session)
    outcome = survivor.merge(duplicate, rules, now=now, by=by.id)
    # The merged lead leaves every duplicate group; the survivor's keys may have grown.
    await _refresh_duplicates(
        store, uow, duplicate, now=now, by=by.id, record=False, in_hand={survivor.id: survivor}
    )
    relinked = await _refresh_duplicates(
        store, uow, survivor, now=now, by=by.id, record=False, in_hand={duplicate.id: duplicate}
    )
    await _save(store, uow, duplicate, duplicate_expected, ["status", "merged_into"])
    await _save(store, uow, survivor, survivor_expected, [*outcome.taken_fields, *relinked, "merged_from"])
    data = LeadMerged(
        survivor=survivor.snapshot(),
        merged_lead_id=duplicate.id,
        taken_fields=outcome.taken_fields,
        matching_keys=outcome.matching_keys,
        merged_at=now,
        merged_by=by,
    )
    await uow.emit(
        catalog.LEAD_MERGED,
        make_event(
            catalog.LEAD_MERGED, data, source=SOURCE, subject=survivor.id, version=survivor.version, time=now
        ),
    )
    return survivor


# -- scoring rules -------------------------------------------------------------------------------
async def replace_scoring_rules(
    repo: LeadRepository,
    uow: UnitOfWork,
    rule_set: ScoringRuleSet,
    *,
    expected_version: int | None,
    by: Actor,
) -> ScoringRules:
    current = await repo.scoring_rules(uow.session, fresh=True)
    if expected_version is not None and expected_version != current.version:
        raise ConcurrentModification(
            f"expected_version: the rules are at version {current.version}, not {expected_version}"
        )
    rules = ScoringRules(
        **rule_set.model_dump(), version=current.version + 1, updated_at=now_ms(), updated_by=by.id
    )
    await repo.save_scoring_rules(rules, current.version, uow.session)
    return rules


# -- picklists ----------------------------------------------------------------------------------
async def revise_picklist(
    repo: LeadRepository,
    uow: UnitOfWork,
    name: PicklistName,
    values: list[PicklistValue],
    *,
    blank_value: str | None,
    unknown_values: UnknownValues,
    expected_version: int | None,
    by: Actor,
) -> Picklist:
    """Replace one of the leads service's picklists and announce it on ``picklist.revised``.
    Leads keep the values they hold; see ``Picklist.revised``."""
    return await repo.picklist_store.revise(
        uow,
        name,
        values,
        blank_value=blank_value,
        unknown_values=unknown_values,
        expected_version=expected_version,
        by=by,
        source=SOURCE,
    )


async def rescore_leads(
    repo: LeadRepository, uow: UnitOfWork, lead_ids: list[str], rules: ScoringRules
) -> int:
    """Score a batch of open leads again under ``rules``, set-based: one read, one bulk write
    and one outbox write for the batch, a ``lead.updated`` for each lead whose score, rating
    or explanation changed (a rep's rating stays). Returns how many changed."""
    now = now_ms()
    changed: list[tuple[Lead, int]] = []
    unchanged: list[str] = []
    events: list[tuple[EventSpec[Any], CloudEvent[Any]]] = []
    for lead in await repo.get_many(lead_ids, uow.session):
        if lead.status not in OPEN_STATUSES:
            continue
        expected = lead.version
        fields = lead.rescore(rules, now=now, by=SCORING_ACTOR)
        if fields:
            changed.append((lead, expected))
            events.append((catalog.LEAD_UPDATED, _updated_event(lead, fields)))
        else:
            unchanged.append(lead.id)
    await repo.save_rescored(changed, unchanged, rules.version, uow.session)
    await uow.emit_many(events)
    return len(changed)


RESCORING_JOB = "lead-rescoring"


def rescoring_step(repo: LeadRepository, batch_size: int) -> Step:
    """One batch of the rescoring job: the next open leads scored under other rules than the
    ones in force. Resuming needs no position: what is rescored no longer matches. Rules that
    change under the job are simply the ones the next batch applies."""

    async def step(job: Job, uow: UnitOfWork) -> JobStep:
        rules = await repo.scoring_rules(uow.session, fresh=True)
        total = job.total
        if total is None or job.position != rules.version:
            # The first batch, or new rules: every open lead not yet under them is ahead.
            total = job.processed + await repo.count_to_rescore(rules.version, uow.session)
        lead_ids = await repo.ids_to_rescore(rules.version, batch_size, uow.session)
        changed = await rescore_leads(repo, uow, lead_ids, rules)
        return JobStep(
            processed=len(lead_ids),
            applied=changed,
            position=rules.version,
            total=total,
            done=len(lead_ids) < batch_size,
        )

    return step


class Rescoring:
    """Asks for the rescoring job: after a rule change (here or, noticed, in another
    replica), at start when leads under older rules remain, or on an administrator's request.
    There is one such job at a time; asking while it runs returns it."""

    def __init__(self, jobs: JobRunner, repo: LeadRepository) -> None:
        self._jobs = jobs
        self._repo = repo
        self._pending: set[asyncio.Task[Any]] = set()

    async def request(self) -> tuple[Job, bool]:
        """The rescoring job, and whether this request created it."""
        return await self._jobs.submit(RESCORING_JOB)

    def request_soon(self) -> None:
        """For callers that cannot wait (the rules observer is synchronous)."""
        task = asyncio.create_task(self._request_logged(), name="request-rescoring")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _request_logged(self) -> None:
        try:
            await self.request()
        except Exception:
            log.exception("could not queue the rescoring job; the next rule change or start does")

    async def resume_if_needed(self) -> None:
        """At start: leads left under older rules (a rule change no replica acted on) get a job."""
        rules = await self._repo.scoring_rules(fresh=True)
        if await self._repo.count_to_rescore(rules.version):
            await self.request()

    async def stop(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
