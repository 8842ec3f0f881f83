"""In-memory facts and counters: folds a stream of events without a database, through the
same projection and the same counter differences as the service, and serves the views from
them. Tests use it as the reference the stored read models must equal."""

from __future__ import annotations

from collections.abc import Collection, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from crm_contracts.envelope import CloudEvent
from crm_contracts.events.opportunities import PipelineDefined
from crm_contracts.events.picklists import PicklistRevised

from .aggregates import Changes, CounterKey, Fields, Tally, nest
from .domain import CampaignFacts, LeadFacts, OpportunityFacts
from .projection import project
from .views import CounterDoc, Selector, matches

T = TypeVar("T")


@dataclass
class MemoryFactStore:
    leads: dict[str, LeadFacts] = field(default_factory=dict)
    opportunities: dict[str, OpportunityFacts] = field(default_factory=dict)
    campaigns: dict[str, CampaignFacts] = field(default_factory=dict)
    members: set[tuple[str, str]] = field(default_factory=set)
    counts: dict[CounterKey, Fields] = field(default_factory=dict)
    names: dict[CounterKey, dict[str, str]] = field(default_factory=dict)
    as_of: dict[str, datetime] = field(default_factory=dict)
    writes: int = 0
    changes: Changes = field(default_factory=Changes)
    _index: dict[tuple[str, tuple[str, ...]], list[CounterKey]] | None = field(
        default=None, repr=False, compare=False
    )

    async def lead(self, lead_id: str) -> LeadFacts | None:
        return self.leads.get(lead_id)

    async def save_lead(self, lead: LeadFacts) -> None:
        self.changes.lead(self.leads.get(lead.lead_id), lead)
        self.leads[lead.lead_id] = lead
        self.writes += 1

    async def opportunity(self, opportunity_id: str) -> OpportunityFacts | None:
        return self.opportunities.get(opportunity_id)

    async def save_opportunity(self, opportunity: OpportunityFacts) -> None:
        self.changes.opportunity(self.opportunities.get(opportunity.opportunity_id), opportunity)
        self.opportunities[opportunity.opportunity_id] = opportunity
        self.writes += 1

    async def campaign(self, campaign_id: str) -> CampaignFacts | None:
        return self.campaigns.get(campaign_id)

    async def save_campaign(self, campaign: CampaignFacts) -> None:
        self.changes.campaign(self.campaigns.get(campaign.campaign_id), campaign)
        self.campaigns[campaign.campaign_id] = campaign
        self.writes += 1

    async def add_member(self, campaign_id: str, member_id: str, at: datetime) -> bool:
        if (campaign_id, member_id) in self.members:
            return False
        self.members.add((campaign_id, member_id))
        self.changes.new_members.append((campaign_id, at))
        self.writes += 1
        return True

    async def define_pipeline(self, pipeline: PipelineDefined) -> None:
        self.changes.pipelines.append(pipeline)

    async def define_picklist(self, picklist: PicklistRevised) -> None:
        self.changes.picklists.append(picklist)

    def apply(self, tally: Tally) -> None:
        """Add counter differences (what the merger does to the stored counters)."""
        self._index = None
        for key, fields in tally.counts.items():
            held = self.counts.setdefault(key, {})
            for name, value in fields.items():
                total = held.get(name, 0) + value
                if total:
                    held[name] = total
                else:
                    held.pop(name, None)
            if not held:
                del self.counts[key]
        for key, names in tally.names.items():
            kept = self.names.setdefault(key, {})
            for name, tag in names.items():
                kept[name] = max(kept.get(name, ""), tag)

    def fold(self, events: Iterable[CloudEvent[Any]]) -> MemoryFactStore:
        """Project ``events`` in the given order, each followed by its counter differences;
        returns self."""
        for event in events:
            run_now(project(event, self))
            changes, self.changes = self.changes, Changes()
            self.apply(changes.tally())
            for kind, moment in changes.as_of().items():
                self.as_of[kind] = max(self.as_of.get(kind, moment), moment)
        return self

    def recount(self) -> MemoryFactStore:
        """Counters computed afresh from the final facts alone (no history of changes)."""
        fresh = MemoryFactStore()
        changes = Changes()
        for lead in self.leads.values():
            changes.lead(None, lead)
        for opportunity in self.opportunities.values():
            changes.opportunity(None, opportunity)
        changes.new_members = [(campaign, datetime.min) for campaign, _ in sorted(self.members)]
        fresh.apply(changes.tally())
        return fresh

    # -- the views' source ------------------------------------------------------------------
    def _keys_of(self, view: str, cuboid: tuple[str, ...]) -> list[CounterKey]:
        if self._index is None:
            index: dict[tuple[str, tuple[str, ...]], set[CounterKey]] = {}
            for key in [*self.counts, *self.names]:
                index.setdefault((key.view, key.cuboid), set()).add(key)
            self._index = {k: sorted(v, key=lambda key: key.doc_id) for k, v in index.items()}
        return self._index.get((view, cuboid), [])

    async def counters(self, selector: Selector) -> list[CounterDoc]:
        found = []
        for key in self._keys_of(selector.view, selector.cuboid):
            values = dict(zip(key.cuboid, key.values, strict=True))
            if matches(selector, values, key.period):
                measures = nest({**self.counts.get(key, {}), **self.names.get(key, {})})
                found.append(CounterDoc(values=values, period=key.period, measures=measures))
        return found

    async def counters_by_key(self, keys: Collection[CounterKey]) -> list[CounterDoc]:
        found = []
        for key in keys:
            if key in self.counts or key in self.names:
                values = dict(zip(key.cuboid, key.values, strict=True))
                measures = nest({**self.counts.get(key, {}), **self.names.get(key, {})})
                found.append(CounterDoc(values=values, period=key.period, measures=measures))
        return found

    async def campaigns_of(self, campaign_ids: Collection[str] | None) -> list[CampaignFacts]:
        if campaign_ids is None:
            return list(self.campaigns.values())
        return [self.campaigns[c] for c in campaign_ids if c in self.campaigns]


class MemoryViews:
    """``ViewSource`` over a ``MemoryFactStore`` (its own ``campaign(s)`` are fact lookups)."""

    def __init__(self, store: MemoryFactStore) -> None:
        self.store = store

    async def counters(self, selector: Selector) -> list[CounterDoc]:
        return await self.store.counters(selector)

    async def counters_by_key(self, keys: Collection[CounterKey]) -> list[CounterDoc]:
        return await self.store.counters_by_key(keys)

    async def campaigns(self, campaign_ids: Collection[str] | None) -> list[CampaignFacts]:
        return await self.store.campaigns_of(campaign_ids)


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """This store never suspends, so a projection over it completes in one step and needs no
    event loop."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a projection over the in-memory store suspended")


__all__ = ["MemoryFactStore", "MemoryViews", "run_now"]
