"""Reporting's storage: one document per lead, opportunity and campaign (the facts), and the
aggregations that turn them into the funnel and the pipeline at read time.

The aggregations use only ``$match``, ``$sort``, ``$group`` with ``$sum``/``$first``/``$cond``
and comparison operators, which MongoDB 7+ and SecantusDB both implement. Decimal128 sums are
exact on both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any, TypeVar

from crm_runtime.mongo import Document, from_bson, to_bson
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from .domain import (
    FUNNEL_STEPS,
    CampaignFacts,
    Fact,
    FunnelCounts,
    FunnelQuery,
    LeadFacts,
    OpportunityFacts,
    PeriodBasis,
    PipelineCell,
    PipelineKey,
    PipelineQuery,
    group_key,
)

LEAD_FACTS = "lead_facts"
OPPORTUNITY_FACTS = "opportunity_facts"
CAMPAIGN_FACTS = "campaign_facts"

F = TypeVar("F", bound=Fact)


def _to_document(fact: Fact, key_field: str) -> Document:
    data = fact.model_dump()
    document: Document = to_bson(data)
    document["_id"] = document.pop(key_field)
    return document


def _to_fact(document: Document, model: type[F], key_field: str) -> F:
    data = from_bson(document)
    data[key_field] = data.pop("_id")
    return model.model_validate(data)


class MongoFactStore:
    """The ``FactStore`` of one transaction: every read and write goes through its session."""

    def __init__(self, repo: ReportingRepository, session: AsyncClientSession) -> None:
        self._repo = repo
        self._session = session

    async def _get(self, collection: AsyncCollection[Document], key: str) -> Document | None:
        return await collection.find_one({"_id": key}, session=self._session)

    async def _put(self, collection: AsyncCollection[Document], document: Document) -> None:
        await collection.replace_one({"_id": document["_id"]}, document, upsert=True, session=self._session)

    async def lead(self, lead_id: str) -> LeadFacts | None:
        document = await self._get(self._repo.leads, lead_id)
        return _to_fact(document, LeadFacts, "lead_id") if document else None

    async def save_lead(self, lead: LeadFacts) -> None:
        await self._put(self._repo.leads, _to_document(lead, "lead_id"))

    async def opportunity(self, opportunity_id: str) -> OpportunityFacts | None:
        document = await self._get(self._repo.opportunities, opportunity_id)
        return _to_fact(document, OpportunityFacts, "opportunity_id") if document else None

    async def save_opportunity(self, opportunity: OpportunityFacts) -> None:
        await self._put(self._repo.opportunities, _to_document(opportunity, "opportunity_id"))

    async def campaign(self, campaign_id: str) -> CampaignFacts | None:
        document = await self._get(self._repo.campaigns, campaign_id)
        return _to_fact(document, CampaignFacts, "campaign_id") if document else None

    async def save_campaign(self, campaign: CampaignFacts) -> None:
        await self._put(self._repo.campaigns, _to_document(campaign, "campaign_id"))


def _funnel_pipeline(query: FunnelQuery) -> list[Document]:
    match: Document = {}
    for field in ("lead_source", "campaign_id", "rating"):
        value = group_key(getattr(query, field))
        if value is not None:
            match[field] = value
    period: Document = {}
    if query.period_from is not None:
        period["$gte"] = query.period_from
    if query.period_to is not None:
        period["$lt"] = query.period_to

    def reached(step: str) -> Document:
        field = f"$funnel.{step}"
        conditions: list[Document] = [{"$gt": [field, None]}]
        if query.basis == PeriodBasis.ACTIVITY:
            if query.period_from is not None:
                conditions.append({"$gte": [field, query.period_from]})
            if query.period_to is not None:
                conditions.append({"$lt": [field, query.period_to]})
        return {"$sum": {"$cond": [{"$and": conditions}, 1, 0]}}

    if period and query.basis == PeriodBasis.COHORT:
        match["funnel.captured"] = period
    elif period:
        # Only leads with some step in the period can count; lets an index narrow the scan.
        match["$or"] = [{f"funnel.{step}": period} for step in FUNNEL_STEPS]
    group: Document = {"_id": f"${query.group_by.value}" if query.group_by else None}
    group.update({step: reached(step) for step in FUNNEL_STEPS})
    return [{"$match": match}, {"$group": group}]


def _pipeline_pipeline(query: PipelineQuery) -> list[Document]:
    match: Document = {"stage_kind": "open"}
    if query.pipeline_id is not None:
        match["pipeline_id"] = query.pipeline_id
    if query.owner_id is not None:
        match["owner_id"] = query.owner_id
    return [
        {"$match": match},
        # $first after this sort: the stage's name as its most recently changed opportunity says.
        {"$sort": {"as_of": DESCENDING, "stage_name": DESCENDING}},
        {
            "$group": {
                "_id": {"pipeline_id": "$pipeline_id", "stage_id": "$stage_id", "currency": "$currency"},
                "stage_name": {"$first": "$stage_name"},
                "count": {"$sum": 1},
                "amount": {"$sum": "$amount"},
                "weighted_amount": {"$sum": "$weighted_amount"},
            }
        },
    ]


class ReportingRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.leads: AsyncCollection[Document] = db[LEAD_FACTS]
        self.opportunities: AsyncCollection[Document] = db[OPPORTUNITY_FACTS]
        self.campaigns: AsyncCollection[Document] = db[CAMPAIGN_FACTS]

    async def ensure_indexes(self) -> None:
        for field in ("lead_source", "campaign_id", "rating"):
            await self.leads.create_index([(field, ASCENDING), ("funnel.captured", ASCENDING)])
        for step in FUNNEL_STEPS:
            await self.leads.create_index([(f"funnel.{step}", ASCENDING)])
        await self.leads.create_index([("as_of", DESCENDING)])
        await self.opportunities.create_index(
            [("stage_kind", ASCENDING), ("pipeline_id", ASCENDING), ("owner_id", ASCENDING)]
        )
        await self.opportunities.create_index([("as_of", DESCENDING)])

    def facts(self, session: AsyncClientSession) -> MongoFactStore:
        return MongoFactStore(self, session)

    # -- views ------------------------------------------------------------------------------
    async def funnel_counts(self, query: FunnelQuery) -> dict[str | None, FunnelCounts]:
        """The same counts as ``domain.count_funnel``, aggregated by the database."""
        cursor = await self.leads.aggregate(_funnel_pipeline(query))
        counts: dict[str | None, FunnelCounts] = {}
        async for group in cursor:
            row = FunnelCounts(*(int(group[step]) for step in FUNNEL_STEPS))
            if row:
                counts[group_key(group["_id"])] = row
        return counts

    async def pipeline_cells(self, query: PipelineQuery) -> dict[PipelineKey, PipelineCell]:
        """The same sums as ``domain.sum_pipeline``, aggregated by the database."""
        cursor = await self.opportunities.aggregate(_pipeline_pipeline(query))
        cells: dict[PipelineKey, PipelineCell] = {}
        async for group in cursor:
            key = group["_id"]
            cells[(key["pipeline_id"], key["stage_id"], key["currency"])] = PipelineCell(
                stage_name=group["stage_name"],
                count=int(group["count"]),
                amount=from_bson(group["amount"]),
                weighted_amount=from_bson(group["weighted_amount"]),
            )
        return cells

    async def campaign_names(self, campaign_ids: Iterable[str | None]) -> dict[str, str]:
        wanted = sorted({c for c in campaign_ids if c is not None})
        if not wanted:
            return {}
        cursor = self.campaigns.find({"_id": {"$in": wanted}}, {"name": 1})
        return {doc["_id"]: doc["name"] async for doc in cursor if doc.get("name")}

    async def funnel_as_of(self) -> datetime | None:
        return await _newest(self.leads)

    async def pipeline_as_of(self) -> datetime | None:
        return await _newest(self.opportunities)

    # -- whole collections (rebuild checks, tests) ------------------------------------------
    async def all_leads(self) -> AsyncIterator[LeadFacts]:
        async for document in self.leads.find({}, sort=[("_id", ASCENDING)]):
            yield _to_fact(document, LeadFacts, "lead_id")

    async def all_opportunities(self) -> AsyncIterator[OpportunityFacts]:
        async for document in self.opportunities.find({}, sort=[("_id", ASCENDING)]):
            yield _to_fact(document, OpportunityFacts, "opportunity_id")


async def _newest(collection: AsyncCollection[Document]) -> datetime | None:
    document: Any = await collection.find_one(
        {"as_of": {"$ne": None}}, {"as_of": 1}, sort=[("as_of", DESCENDING)]
    )
    return document["as_of"] if document else None
