"""The views BI tools read, computed from counter documents (and, for names and campaign
details, from a few facts). No I/O of its own: a ``ViewSource`` (MongoDB or in memory) hands
over the documents a query selects, so the service and the tests compute rows the same way.

Periods are UTC calendar days, ISO weeks (from Monday), months, quarters and years, by when
things happened. A range ``[from, to)`` is covered by whole years, then whole months, then
single days at its edges, so a query reads a handful of documents whatever its length.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any, Protocol

from crm_contracts.events.campaigns import CampaignStatus, CampaignType
from crm_contracts.events.leads import LeadRating
from crm_contracts.events.opportunities import ForecastCategory
from crm_contracts.events.picklists import PicklistCode, PicklistName
from crm_runtime.picklists import default_values
from pydantic import BaseModel, ConfigDict, Field

from .aggregates import (
    ALL,
    CAMPAIGN_CUBOID,
    CAMPAIGNS,
    DAY_MS,
    DURATION_CUBOID,
    FORECAST,
    FORECAST_CUBOIDS,
    FUNNEL,
    FUNNEL_CUBOIDS,
    HISTORY,
    HISTORY_CUBOID,
    LABEL_CUBOID,
    LABELS,
    MOVE_CUBOID,
    PIPELINE,
    PIPELINE_CUBOIDS,
    STAGE_CUBOID,
    STAGES,
    TOTALS,
    VELOCITY,
    WIN_LOSS,
    WIN_LOSS_CUBOIDS,
    CounterKey,
    Cuboid,
    Fields,
    Number,
    flatten,
    month_period,
    name_of,
)
from .domain import FUNNEL_STEPS, CampaignFacts, value_of

RATE_QUANTUM = Decimal("0.0001")
AMOUNT_QUANTUM = Decimal("0.01")
WEIGHTED_QUANTUM = Decimal("0.0001")
DAYS_QUANTUM = Decimal("0.0001")
MAX_DAY_BUCKETS = 1100
MAX_HISTORY_DAYS = 3700
# Said by every rate's description, after its formula.
RATE_NOTE = " A fraction with four decimals (half even), as a string; null when the divisor is 0."
DEPRECATED_ALIAS = "Deprecated: read {new}; this name goes in the next release."


class QueryError(ValueError):
    """A query the views cannot answer; ``field`` names the parameter at fault."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


# -- reading counters -------------------------------------------------------------------------
@dataclass(frozen=True)
class Selector:
    """Counter documents of one cuboid: dimension values to match, which periods (listed ones,
    and/or whole years in ``[years[0], years[1])``), and which parts of them to read (``t``:
    totals, ``months``, ``days.05``, ...)."""

    view: str
    cuboid: Cuboid
    match: Mapping[str, str] = field(default_factory=dict)
    periods: tuple[str, ...] = ()
    years: tuple[int | None, int | None] | None = None
    parts: tuple[str, ...] = (TOTALS,)


@dataclass(frozen=True)
class CounterDoc:
    values: Mapping[str, str | None]
    period: str
    measures: Mapping[str, Any]  # nested, as stored

    def total(self) -> Fields:
        return flatten(self.measures.get(TOTALS, {}))

    def text(self, name: str) -> str | None:
        value = self.measures.get(TOTALS, {}).get(name)
        return value if isinstance(value, str) else None

    def part(self, kind: str, index: int) -> Fields:
        node = self.measures.get(kind, {}).get(f"{index:02d}")
        return flatten(node) if node else {}


class ViewSource(Protocol):
    async def counters(self, selector: Selector) -> list[CounterDoc]: ...
    async def counters_by_key(self, keys: Collection[CounterKey]) -> list[CounterDoc]: ...
    async def campaigns(self, campaign_ids: Collection[str] | None) -> list[CampaignFacts]: ...


def matches_values(selector: Selector, values: Mapping[str, str | None]) -> bool:
    return all(values.get(name) == wanted for name, wanted in selector.match.items())


def matches(selector: Selector, values: Mapping[str, str | None], period: str) -> bool:
    """Whether a document is selected (the in-memory source uses it; MongoDB gets a query)."""
    if not matches_values(selector, values):
        return False
    if period in selector.periods:
        return True
    if selector.years is not None and len(period) == 4:
        low, high = selector.years
        return (low is None or int(period) >= low) and (high is None or int(period) < high)
    return False


def choose_cuboid(cuboids: Sequence[Cuboid], needed: Iterable[str], view: str) -> Cuboid:
    wanted = set(needed)
    fitting = [c for c in cuboids if wanted <= set(c)]
    if not fitting:
        together = " and ".join(sorted(wanted))
        raise QueryError(
            "group_by", f"{view} is not kept by {together} together (see the view's description)"
        )
    return min(fitting, key=len)


def add_fields(into: dict[str, Number], fields: Mapping[str, Number]) -> None:
    for name, value in fields.items():
        into[name] = into.get(name, 0) + value


def sum_fields(docs: Iterable[CounterDoc]) -> Fields:
    total: Fields = {}
    for doc in docs:
        add_fields(total, doc.total())
    return total


# -- periods ----------------------------------------------------------------------------------
class Grain(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    QUARTER = "quarter"
    YEAR = "year"


def bucket_of(day: date, grain: Grain | None) -> date | None:
    """The first day of the period ``day`` falls in."""
    if grain is None:
        return None
    if grain == Grain.DAY:
        return day
    if grain == Grain.WEEK:
        return day - timedelta(days=day.weekday())
    if grain == Grain.MONTH:
        return day.replace(day=1)
    if grain == Grain.QUARTER:
        return date(day.year, (day.month - 1) // 3 * 3 + 1, 1)
    return date(day.year, 1, 1)


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def _days(start: date, end: date) -> Iterable[date]:
    day = start
    while day < end:
        yield day
        day += timedelta(days=1)


@dataclass
class Tiling:
    """Which counter documents (and which parts of them) cover a range exactly."""

    full_years: tuple[int | None, int | None] | None = None
    months_of_full_years: bool = False
    year_months: dict[int, set[int]] = field(default_factory=dict)
    month_days: dict[tuple[int, int], set[int]] = field(default_factory=dict)

    def selectors(self, view: str, cuboid: Cuboid, match: Mapping[str, Any]) -> list[Selector]:
        """Edge months and days by their periods (reading only the months and days wanted),
        whole years by range (their totals, or their months)."""
        selectors = []
        if self.year_months or self.month_days:
            periods = {f"{y:04d}" for y in self.year_months} | {
                f"{y:04d}-{m:02d}" for y, m in self.month_days
            }
            parts = {f"months.{m:02d}" for months in self.year_months.values() for m in months}
            parts |= {f"days.{d:02d}" for days in self.month_days.values() for d in days}
            selectors.append(
                Selector(view, cuboid, match, periods=tuple(sorted(periods)), parts=tuple(sorted(parts)))
            )
        if self.full_years is not None:
            whole = ("months",) if self.months_of_full_years else (TOTALS,)
            selectors.append(Selector(view, cuboid, match, years=self.full_years, parts=whole))
        return selectors

    def units(self, doc: CounterDoc) -> Iterable[tuple[date, Fields]]:
        """The parts of ``doc`` inside the range, each with the first day it covers."""
        if len(doc.period) == 4:
            year = int(doc.period)
            if year in self.year_months:
                for month in sorted(self.year_months[year]):
                    yield date(year, month, 1), doc.part("months", month)
            elif self.months_of_full_years:
                for month in sorted(int(m) for m in doc.measures.get("months", {})):
                    yield date(year, month, 1), doc.part("months", month)
            else:
                yield date(year, 1, 1), doc.total()
        else:
            year, month = int(doc.period[:4]), int(doc.period[5:])
            for day in sorted(self.month_days.get((year, month), ())):
                yield date(year, month, day), doc.part("days", day)


def tile(
    start: date | None, end: date | None, grain: Grain | None, max_days: int = MAX_DAY_BUCKETS
) -> Tiling:
    """Cover ``[start, end)`` (open ends allowed unless days are wanted) with the coarsest
    parts that still put every day into the right ``grain`` period."""
    tiling = Tiling()
    if start is not None and end is not None and end <= start:
        return tiling
    if grain in (Grain.DAY, Grain.WEEK):
        if start is None or end is None:
            raise QueryError("from" if start is None else "to", f"period={grain.value} needs from and to")
        if (end - start).days > max_days:
            raise QueryError("to", f"period={grain.value} covers at most {max_days} days")
        for day in _days(start, end):
            tiling.month_days.setdefault((day.year, day.month), set()).add(day.day)
        return tiling
    # Edge days up to the first month boundary and from the last one.
    if start is not None and start.day != 1:
        stop = _next_month(start) if end is None else min(end, _next_month(start))
        for day in _days(start, stop):
            tiling.month_days.setdefault((day.year, day.month), set()).add(day.day)
        start = stop
    if end is not None and end.day != 1 and (start is None or start < end):
        first = end.replace(day=1) if start is None else max(start, end.replace(day=1))
        for day in _days(first, end):
            tiling.month_days.setdefault((day.year, day.month), set()).add(day.day)
        end = first
    if start is not None and end is not None and start >= end:
        return tiling
    # Edge months up to the first year boundary and from the last one.
    if start is not None and start.month != 1:
        stop = date(start.year + 1, 1, 1) if end is None else min(end, date(start.year + 1, 1, 1))
        month = start
        while month < stop:
            tiling.year_months.setdefault(month.year, set()).add(month.month)
            month = _next_month(month)
        start = stop
    if end is not None and end.month != 1 and (start is None or start < end):
        first = date(end.year, 1, 1) if start is None else max(start, date(end.year, 1, 1))
        month = first
        while month < end:
            tiling.year_months.setdefault(month.year, set()).add(month.month)
            month = _next_month(month)
        end = first
    if start is None or end is None or start < end:
        tiling.full_years = (start.year if start else None, end.year if end else None)
        tiling.months_of_full_years = grain in (Grain.MONTH, Grain.QUARTER)
    return tiling


async def read_dated(
    source: ViewSource,
    view: str,
    cuboid: Cuboid,
    match: Mapping[str, Any],
    start: date | None,
    end: date | None,
    grain: Grain | None,
    group: Sequence[str],
    max_days: int = MAX_DAY_BUCKETS,
) -> dict[tuple[tuple[str | None, ...], date | None], Fields]:
    """Dated counters summed per (values of ``group``, period)."""
    tiling = tile(start, end, grain, max_days)
    totals: dict[tuple[tuple[str | None, ...], date | None], Fields] = {}
    for selector in tiling.selectors(view, cuboid, match):
        for doc in await source.counters(selector):
            key = tuple(doc.values.get(name) for name in group)
            for first_day, fields in tiling.units(doc):
                if fields:
                    add_fields(totals.setdefault((key, bucket_of(first_day, grain)), {}), fields)
    return totals


# -- numbers ----------------------------------------------------------------------------------
def ratio(part: Number, whole: Number, quantum: Decimal = RATE_QUANTUM) -> Decimal | None:
    """part / whole with four decimals (half-even); None when the whole is zero."""
    if not whole:
        return None
    return (Decimal(part) / Decimal(whole)).quantize(quantum, rounding=ROUND_HALF_EVEN)


def from_cents(value: Number | None) -> Decimal:
    """Money kept in counters as integer cents."""
    return (Decimal(value or 0) / 100).quantize(AMOUNT_QUANTUM)


def from_ten_thousandths(value: Number | None) -> Decimal:
    """Weighted amounts kept in counters as integer ten-thousandths."""
    return (Decimal(value or 0) / 10_000).quantize(WEIGHTED_QUANTUM)


def money(value: Number | None) -> Decimal:
    return Decimal(value or 0).quantize(AMOUNT_QUANTUM)


def ms_to_days(total_ms: Number, count: Number) -> Decimal | None:
    if not count:
        return None
    return (Decimal(total_ms) / Decimal(count) / DAY_MS).quantize(DAYS_QUANTUM, rounding=ROUND_HALF_EVEN)


def by_currency(fields: Mapping[str, Number], prefix: str) -> dict[str, Number]:
    return {name[len(prefix) + 1 :]: v for name, v in fields.items() if name.startswith(prefix + ".") and v}


def sort_key(value: Any) -> tuple[bool, str]:
    """None last, everything else by its text."""
    return (value is None, "" if value is None else str(value))


class Period(BaseModel):
    """Shared by the dated views: the range (UTC days) and how to split it."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    period_from: date | None = Field(default=None, alias="from", description="First day (inclusive).")
    period_to: date | None = Field(default=None, alias="to", description="End day (exclusive).")
    period: Grain | None = Field(default=None, description="Split into days, weeks, months, ...")


# -- funnel -----------------------------------------------------------------------------------
class FunnelDimension(StrEnum):
    """What the funnel can be broken down by (a field of the lead's facts)."""

    LEAD_SOURCE = "lead_source"
    ORIGIN = "origin"
    CAMPAIGN = "campaign_id"
    RATING = "rating"
    OWNER = "owner_id"
    UTM_SOURCE = "utm_source"
    UTM_MEDIUM = "utm_medium"
    UTM_CAMPAIGN = "utm_campaign"


class PeriodBasis(StrEnum):
    """``activity``: each step counts the leads that reached it within the period (what
    happened in March). ``cohort``: the leads captured within the period, with every step they
    reached so far (what became of March's leads)."""

    ACTIVITY = "activity"
    COHORT = "cohort"


class FunnelQuery(Period):
    lead_source: PicklistCode | None = None
    origin: PicklistCode | None = None
    campaign_id: str | None = None
    rating: LeadRating | None = None
    owner_id: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    basis: PeriodBasis = PeriodBasis.ACTIVITY
    group_by: FunnelDimension | None = None

    def match(self) -> dict[str, str]:
        chosen = {d.value: value_of(getattr(self, d.value)) for d in FunnelDimension}
        return {name: value for name, value in chosen.items() if value is not None}


@dataclass(frozen=True)
class FunnelCounts:
    captured: int = 0
    qualified: int = 0
    converted: int = 0
    opportunity: int = 0
    won: int = 0

    def __add__(self, other: FunnelCounts) -> FunnelCounts:
        return FunnelCounts(*(getattr(self, s) + getattr(other, s) for s in FUNNEL_STEPS))

    def __bool__(self) -> bool:
        return any(getattr(self, s) for s in FUNNEL_STEPS)


class FunnelRow(BaseModel):
    """Each step's rate is its count over the step before it; overall_rate spans the funnel."""

    group: str | None = Field(description="The value of group_by, null for none/unknown.")
    group_name: str | None = Field(description="Display name of the group (campaign name).")
    period: date | None = Field(description="First day of the period (null when not split).")
    captured: int
    qualified: int
    converted: int
    opportunities: int
    won: int
    qualified_rate: Decimal | None = Field(
        description="qualified / captured: the captured leads that were qualified." + RATE_NOTE
    )
    converted_rate: Decimal | None = Field(
        deprecated=DEPRECATED_ALIAS.format(new="qualified_to_converted_rate"),
        description="converted / qualified: qualified_to_converted_rate under its old name. "
        + DEPRECATED_ALIAS.format(new="qualified_to_converted_rate"),
    )
    opportunity_rate: Decimal | None = Field(
        description="opportunities / converted: converted leads that brought an opportunity." + RATE_NOTE
    )
    won_rate: Decimal | None = Field(
        description="won / opportunities: opportunities from these leads that were won." + RATE_NOTE
    )
    overall_rate: Decimal | None = Field(
        description="won / captured: captured leads that ended in a won opportunity." + RATE_NOTE
    )
    qualified_to_converted_rate: Decimal | None = Field(
        description="converted / qualified: qualified leads that were converted." + RATE_NOTE
    )


def funnel_row(group: str | None, name: str | None, period: date | None, c: FunnelCounts) -> FunnelRow:
    qualified_to_converted = ratio(c.converted, c.qualified)
    return FunnelRow(
        group=group,
        group_name=name,
        period=period,
        captured=c.captured,
        qualified=c.qualified,
        converted=c.converted,
        opportunities=c.opportunity,
        won=c.won,
        qualified_rate=ratio(c.qualified, c.captured),
        converted_rate=qualified_to_converted,
        opportunity_rate=ratio(c.opportunity, c.converted),
        won_rate=ratio(c.won, c.opportunity),
        overall_rate=ratio(c.won, c.captured),
        qualified_to_converted_rate=qualified_to_converted,
    )


async def funnel_counts(
    source: ViewSource, query: FunnelQuery
) -> dict[tuple[str | None, date | None], FunnelCounts]:
    match = query.match()
    group = [query.group_by.value] if query.group_by else []
    cuboid = choose_cuboid(FUNNEL_CUBOIDS, [*match, *group], "the funnel")
    prefix = "a" if query.basis == PeriodBasis.ACTIVITY else "c"
    counts: dict[tuple[str | None, date | None], FunnelCounts] = {}
    # Cohort counts (c.*) are all dated on the capture day, so the same range selects the leads
    # captured in it, with every step they reached since.
    dated = await read_dated(
        source, FUNNEL, cuboid, match, query.period_from, query.period_to, query.period, group
    )
    for (key, period), fields in dated.items():
        row = FunnelCounts(*(int(fields.get(f"{prefix}.{step}", 0)) for step in FUNNEL_STEPS))
        if row:
            group_value = key[0] if key else None
            counts[(group_value, period)] = counts.get((group_value, period), FunnelCounts()) + row
    return counts


async def funnel_rows(source: ViewSource, query: FunnelQuery) -> list[FunnelRow]:
    """One row per group and period (sorted, unknown last); an ungrouped, unsplit funnel is a
    single total row even when empty."""
    counts = await funnel_counts(source, query)
    if query.group_by is None and query.period is None:
        return [funnel_row(None, None, None, counts.get((None, None), FunnelCounts()))]
    names = await campaign_names(source, [g for g, _ in counts], query.group_by == FunnelDimension.CAMPAIGN)
    keys = sorted(counts, key=lambda k: (sort_key(k[0]), sort_key(k[1])))
    return [funnel_row(g, names.get(g) if g else None, p, counts[(g, p)]) for g, p in keys]


async def campaign_names(source: ViewSource, ids: Iterable[str | None], wanted: bool) -> dict[str, str]:
    if not wanted:
        return {}
    known = sorted({i for i in ids if i is not None})
    if not known:
        return {}
    return {c.campaign_id: c.name for c in await source.campaigns(known) if c.name}


# -- lead sources -----------------------------------------------------------------------------
class LeadSourceQuery(Period):
    campaign_id: str | None = None
    currency: str = Field(
        description="Currency of won_revenue (the company currency unless the request named one); "
        "others are listed apart."
    )


class LeadSourceRow(BaseModel):
    lead_source: str | None = Field(description="The lead_source picklist's value (unknown: none given)")
    label: str | None = Field(description="The value's label in the organisation's picklist")
    period: date | None
    leads: int = Field(description="Leads captured.")
    qualified: int
    converted: int
    opportunities: int = Field(description="Opportunities created from the source.")
    won: int
    lost: int
    currency: str = Field(description="Currency of won_revenue.")
    won_revenue: Decimal
    won_revenue_in_other_currencies: dict[str, Decimal]
    qualified_rate: Decimal | None = Field(
        description="qualified / leads: the captured leads that were qualified." + RATE_NOTE
    )
    converted_rate: Decimal | None = Field(
        deprecated=DEPRECATED_ALIAS.format(new="lead_conversion_rate"),
        description="converted / leads: lead_conversion_rate under its old name. "
        + DEPRECATED_ALIAS.format(new="lead_conversion_rate"),
    )
    win_rate: Decimal | None = Field(
        description="won / (won + lost): the closed opportunities that were won." + RATE_NOTE
    )
    lead_conversion_rate: Decimal | None = Field(
        description="converted / leads: the captured leads that were converted." + RATE_NOTE
    )


async def lead_source_rows(source: ViewSource, query: LeadSourceQuery) -> list[LeadSourceRow]:
    match: dict[str, Any] = {"campaign_id": query.campaign_id} if query.campaign_id else {}
    group = ["lead_source"]
    span = (query.period_from, query.period_to, query.period)
    funnel_cuboid = choose_cuboid(FUNNEL_CUBOIDS, [*match, *group], "lead sources")
    deals_cuboid = choose_cuboid(WIN_LOSS_CUBOIDS, [*match, *group], "lead sources")
    leads = await read_dated(source, FUNNEL, funnel_cuboid, match, *span, group)
    deals = await read_dated(source, WIN_LOSS, deals_cuboid, match, *span, group)
    labels = await picklist_labels(source, PicklistName.LEAD_SOURCE)
    rows = []
    for key in sorted(set(leads) | set(deals), key=lambda k: (sort_key(k[0][0]), sort_key(k[1]))):
        lf, df = leads.get(key, {}), deals.get(key, {})
        won_amounts = by_currency(df, "won_amount")
        count = {n: int(lf.get(f"a.{n}", 0)) for n in ("captured", "qualified", "converted")}
        won, lost = int(df.get("won", 0)), int(df.get("lost", 0))
        if not any(count.values()) and not df.get("created") and not won and not lost:
            continue
        lead_conversion = ratio(count["converted"], count["captured"])
        rows.append(
            LeadSourceRow(
                lead_source=key[0][0],
                label=labels.get(str(key[0][0])),
                period=key[1],
                leads=count["captured"],
                qualified=count["qualified"],
                converted=count["converted"],
                opportunities=int(df.get("created", 0)),
                won=won,
                lost=lost,
                currency=query.currency,
                won_revenue=from_cents(won_amounts.pop(query.currency, 0)),
                won_revenue_in_other_currencies={c: from_cents(v) for c, v in sorted(won_amounts.items())},
                qualified_rate=ratio(count["qualified"], count["captured"]),
                converted_rate=lead_conversion,
                win_rate=ratio(won, won + lost),
                lead_conversion_rate=lead_conversion,
            )
        )
    return rows


async def picklist_labels(source: ViewSource, picklist: PicklistName) -> dict[str, str]:
    """Each value's label: the newest revision's (``picklist.revised``), else the default's."""
    values, _ = default_values(picklist)
    labels = {entry.value: entry.label for entry in values}
    selector = Selector(LABELS, LABEL_CUBOID, match={"picklist": picklist.value}, periods=(ALL,))
    for doc in await source.counters(selector):
        label = doc.text("label")
        if label:
            labels[str(doc.values["value"])] = name_of(label)
    return labels


# -- win/loss ---------------------------------------------------------------------------------
class WinLossDimension(StrEnum):
    OWNER = "owner_id"
    SALES_TEAM = "sales_team_id"
    SALES_REGION = "sales_region"
    ACCOUNT_INDUSTRY = "account_industry"
    PRODUCT = "product_id"
    PIPELINE = "pipeline_id"
    LEAD_SOURCE = "lead_source"
    CAMPAIGN = "campaign_id"
    LOSS_REASON = "loss_reason"


class WinLossQuery(Period):
    owner_id: str | None = None
    sales_team_id: str | None = None
    sales_region: str | None = None
    account_industry: str | None = None
    product_id: str | None = None
    pipeline_id: str | None = None
    lead_source: PicklistCode | None = None
    campaign_id: str | None = None
    loss_reason: str | None = None
    group_by: WinLossDimension | None = None
    currency: str = Field(
        description="Currency of the money columns (the company currency unless the request named "
        "one); others are listed apart."
    )

    def match(self) -> dict[str, str]:
        chosen = {d.value: value_of(getattr(self, d.value)) for d in WinLossDimension}
        return {name: value for name, value in chosen.items() if value is not None}


class WinLossRow(BaseModel):
    group: str | None = Field(description="The value of group_by (null: none; for loss_reason also won).")
    period: date | None
    opportunities_created: int
    won: int
    lost: int
    win_rate: Decimal | None = Field(
        description="won / (won + lost): the closed opportunities that were won." + RATE_NOTE
    )
    currency: str = Field(description="Currency of won_revenue and average_deal_size.")
    won_revenue: Decimal
    average_deal_size: Decimal | None = Field(
        description="won_revenue / the deals won in this currency: to the cent; null without such deals."
    )
    won_revenue_in_other_currencies: dict[str, Decimal]
    average_cycle_days: Decimal | None = Field(description="Created to closed, won and lost.")
    average_won_cycle_days: Decimal | None = Field(description="Created to won.")
    label: str | None = Field(
        default=None,
        description="group_by=loss_reason: the reason's label in the organisation's loss_reason "
        "picklist (the opportunities service's GET /picklists/loss_reason; its newest picklist.revised)",
    )


async def win_loss_rows(source: ViewSource, query: WinLossQuery) -> list[WinLossRow]:
    match = query.match()
    group = [query.group_by.value] if query.group_by else []
    cuboid = choose_cuboid(WIN_LOSS_CUBOIDS, [*match, *group], "win/loss")
    dated = await read_dated(
        source, WIN_LOSS, cuboid, match, query.period_from, query.period_to, query.period, group
    )
    by_reason = query.group_by is WinLossDimension.LOSS_REASON
    labels = await picklist_labels(source, PicklistName.LOSS_REASON) if by_reason else {}
    rows = []
    for key in sorted(dated, key=lambda k: (sort_key(k[0][0] if k[0] else None), sort_key(k[1]))):
        f = dated[key]
        won, lost = int(f.get("won", 0)), int(f.get("lost", 0))
        if not won and not lost and not f.get("created"):
            continue
        amounts, deals = by_currency(f, "won_amount"), by_currency(f, "won_count")
        revenue = from_cents(amounts.pop(query.currency, 0))
        cycles = f.get("won_cycles", 0) + f.get("lost_cycles", 0)
        rows.append(
            WinLossRow(
                group=key[0][0] if key[0] else None,
                period=key[1],
                opportunities_created=int(f.get("created", 0)),
                won=won,
                lost=lost,
                win_rate=ratio(won, won + lost),
                currency=query.currency,
                won_revenue=revenue,
                average_deal_size=ratio(revenue, deals.get(query.currency, 0), AMOUNT_QUANTUM),
                won_revenue_in_other_currencies={c: from_cents(v) for c, v in sorted(amounts.items())},
                average_cycle_days=ms_to_days(f.get("won_cycle_ms", 0) + f.get("lost_cycle_ms", 0), cycles),
                average_won_cycle_days=ms_to_days(f.get("won_cycle_ms", 0), f.get("won_cycles", 0)),
                label=labels.get(str(key[0][0])) if by_reason and key[0] and key[0][0] else None,
            )
        )
    return rows


# -- pipeline ---------------------------------------------------------------------------------
class PipelineGrouping(StrEnum):
    STAGE = "stage"
    PIPELINE = "pipeline"
    OWNER = "owner"
    SALES_TEAM = "sales_team"
    SALES_REGION = "sales_region"
    ACCOUNT_INDUSTRY = "account_industry"
    PRODUCT = "product"


PIPELINE_GROUPS: dict[PipelineGrouping, tuple[str, ...]] = {
    PipelineGrouping.STAGE: ("pipeline_id", "stage_id"),
    PipelineGrouping.PIPELINE: ("pipeline_id",),
    PipelineGrouping.OWNER: ("owner_id",),
    PipelineGrouping.SALES_TEAM: ("sales_team_id",),
    PipelineGrouping.SALES_REGION: ("sales_region",),
    PipelineGrouping.ACCOUNT_INDUSTRY: ("account_industry",),
    PipelineGrouping.PRODUCT: ("product_id",),
}
SALES_FILTERS = ("owner_id", "sales_team_id", "sales_region", "account_industry", "product_id")


class SalesFilters(BaseModel):
    """Who sells and what (as the opportunity's figures say)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    pipeline_id: str | None = None
    owner_id: str | None = None
    sales_team_id: str | None = None
    sales_region: str | None = None
    account_industry: str | None = None
    product_id: str | None = Field(default=None, description="Opportunities that include this product.")

    def match(self) -> dict[str, str]:
        chosen = {
            name: getattr(self, name)
            for name in ("pipeline_id", "stage_id", *SALES_FILTERS)
            if hasattr(self, name)
        }
        return {name: value for name, value in chosen.items() if value is not None}


class PipelineQuery(SalesFilters):
    stage_id: str | None = None
    group_by: PipelineGrouping = PipelineGrouping.STAGE


class PipelineRow(BaseModel):
    pipeline_id: str | None
    stage_id: str | None
    stage_name: str | None
    owner_id: str | None
    sales_team_id: str | None
    sales_region: str | None
    account_industry: str | None
    product_id: str | None
    currency: str
    count: int
    amount: Decimal = Field(description="Sum of the open opportunities' amounts.")
    weighted_amount: Decimal = Field(description="Sum of amount * probability / 100.")
    average_age_days: Decimal | None = Field(
        description="Mean time since creation, at the time of the request."
    )


@dataclass(frozen=True)
class StageInfo:
    name: str | None
    order: int | None


def _name(info: Mapping[tuple[str, str], StageInfo], key: tuple[str, str]) -> str | None:
    found = info.get(key)
    return found.name if found else None


def stage_sort(
    pipeline: str | None, stage: str | None, info: Mapping[tuple[str, str], StageInfo]
) -> tuple[Any, ...]:
    """Stages in their pipeline's order where the events said it, else by id."""
    found = info.get((str(pipeline), str(stage)))
    order = found.order if found else None
    return (sort_key(pipeline), order is None, order or 0, sort_key(stage))


async def stage_info(
    source: ViewSource, pairs: Iterable[tuple[str | None, str | None]]
) -> dict[tuple[str, str], StageInfo]:
    """Each stage's newest name and position, as the newest event carrying them said."""
    wanted = {(str(p), str(s)) for p, s in pairs if p is not None and s is not None}
    if not wanted:
        return {}
    # Few documents (one per stage): read them all rather than per pipeline.
    found = {}
    for doc in await source.counters(Selector(STAGES, STAGE_CUBOID, periods=(ALL,))):
        pair = (str(doc.values["pipeline_id"]), str(doc.values["stage_id"]))
        if pair in wanted:
            name, order = doc.text("name"), doc.text("order")
            found[pair] = StageInfo(name_of(name) if name else None, int(name_of(order)) if order else None)
    return found


async def pipeline_rows(source: ViewSource, query: PipelineQuery, now: datetime) -> list[PipelineRow]:
    match = query.match()
    group = [*PIPELINE_GROUPS[query.group_by], "currency"]
    cuboid = choose_cuboid(PIPELINE_CUBOIDS, [*match, *group], "the pipeline")
    cells: dict[tuple[str | None, ...], Fields] = {}
    for doc in await source.counters(Selector(PIPELINE, cuboid, match, periods=(ALL,))):
        add_fields(cells.setdefault(tuple(doc.values.get(g) for g in group), {}), doc.total())
    labelled = [(dict(zip(group, key, strict=True)), f) for key, f in cells.items() if f.get("count")]
    info = await stage_info(source, [(v.get("pipeline_id"), v.get("stage_id")) for v, _ in labelled])
    now_ms = int(now.timestamp() * 1000)
    rows = []
    for values, f in labelled:
        aged = f.get("aged", 0)
        stage = info.get((str(values.get("pipeline_id")), str(values.get("stage_id"))))
        rows.append(
            PipelineRow(
                pipeline_id=values.get("pipeline_id"),
                stage_id=values.get("stage_id"),
                stage_name=stage.name if stage else None,
                owner_id=values.get("owner_id"),
                sales_team_id=values.get("sales_team_id"),
                sales_region=values.get("sales_region"),
                account_industry=values.get("account_industry"),
                product_id=values.get("product_id"),
                currency=str(values["currency"]),
                count=int(f["count"]),
                amount=from_cents(f.get("amount")),
                weighted_amount=from_ten_thousandths(f.get("weighted_amount")),
                average_age_days=ms_to_days(now_ms * aged - f.get("created_ms", 0), aged),
            )
        )
    rows.sort(
        key=lambda r: (
            *stage_sort(r.pipeline_id, r.stage_id, info),
            *(sort_key(getattr(r, name)) for name in SALES_FILTERS),
            r.currency,
        )
    )
    return rows


# -- forecast ---------------------------------------------------------------------------------
FORECAST_ORDER = {category: index for index, category in enumerate(ForecastCategory)}


class ForecastQuery(SalesFilters):
    period_from: date | None = Field(
        default=None, alias="from", description="First close month (its 1st day)."
    )
    period_to: date | None = Field(default=None, alias="to", description="Close months before this day.")

    def selects(self, close_month: str | None) -> bool:
        if self.period_from is None and self.period_to is None:
            return True
        if close_month is None:
            return False
        first = date(int(close_month[:4]), int(close_month[5:]), 1)
        return (self.period_from is None or first >= self.period_from) and (
            self.period_to is None or first < self.period_to
        )


class ForecastRow(BaseModel):
    close_month: str | None = Field(description="YYYY-MM: expected close (open) or actual close (won).")
    forecast_category: ForecastCategory
    currency: str
    count: int
    amount: Decimal = Field(description="Unweighted.")
    weighted_amount: Decimal = Field(description="Sum of amount * probability / 100.")


async def forecast_rows(source: ViewSource, query: ForecastQuery) -> list[ForecastRow]:
    match = query.match()
    cuboid = choose_cuboid(FORECAST_CUBOIDS, match, "the forecast")
    group = ("close_month", "forecast_category", "currency")
    cells: dict[tuple[str | None, ...], Fields] = {}
    for doc in await source.counters(Selector(FORECAST, cuboid, match, periods=(ALL,))):
        if query.selects(doc.values.get("close_month")):
            add_fields(cells.setdefault(tuple(doc.values.get(g) for g in group), {}), doc.total())
    rows = [
        ForecastRow(
            close_month=month,
            forecast_category=ForecastCategory(str(category)),
            currency=str(currency),
            count=int(f["count"]),
            amount=from_cents(f.get("amount")),
            weighted_amount=from_ten_thousandths(f.get("weighted_amount")),
        )
        for (month, category, currency), f in cells.items()
        if f.get("count")
    ]
    rows.sort(key=lambda r: (sort_key(r.close_month), FORECAST_ORDER[r.forecast_category], r.currency))
    return rows


# -- stage velocity and conversion ------------------------------------------------------------
class VelocityQuery(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    pipeline_id: str | None = None
    period_from: date | None = Field(default=None, alias="from", description="First day of a month.")
    period_to: date | None = Field(default=None, alias="to", description="First day of a month (exclusive).")

    def periods(self) -> tuple[str, ...]:
        """All time, or the months of the range (stays and moves count when they ended)."""
        if self.period_from is None and self.period_to is None:
            return (ALL,)
        for name, day in (("from", self.period_from), ("to", self.period_to)):
            if day is None:
                raise QueryError(name, "give both from and to, or neither")
            if day.day != 1:
                raise QueryError(name, "velocity is kept per month: use the first day of a month")
        assert self.period_from is not None and self.period_to is not None
        months, month = [], self.period_from
        while month < self.period_to:
            months.append(month_period(month))
            month = _next_month(month)
        if len(months) > 240:
            raise QueryError("to", "at most 240 months")
        return tuple(months)


class StageVelocityRow(BaseModel):
    pipeline_id: str
    stage_id: str
    stage_name: str | None
    entered: int = Field(description="Times opportunities entered the stage.")
    completed: int = Field(description="Stays that ended with a move to another stage.")
    average_days: Decimal | None
    median_days: Decimal | None = Field(description="Median of completed stays (durations to the minute).")


class StageConversionRow(BaseModel):
    pipeline_id: str
    stage_id: str
    stage_name: str | None
    to_stage_id: str
    to_stage_name: str | None
    entered: int = Field(description="Times opportunities entered stage_id.")
    moves: int = Field(description="Moves from stage_id to to_stage_id.")
    conversion_rate: Decimal | None = Field(
        description="moves / entered: the stays in stage_id that ended with a move to to_stage_id."
        + RATE_NOTE
    )


def _kth(histogram: Mapping[int, int], rank: int) -> tuple[int, int]:
    """The bucket holding the ``rank``-th smallest value (1-based) and the rank within it."""
    seen = 0
    for bucket in sorted(histogram):
        if seen + histogram[bucket] >= rank:
            return bucket, rank - seen
        seen += histogram[bucket]
    raise ValueError("rank beyond the histogram")


async def _stage_totals(source: ViewSource, query: VelocityQuery) -> dict[tuple[str, str], Fields]:
    match: dict[str, Any] = {"pipeline_id": query.pipeline_id} if query.pipeline_id else {}
    totals: dict[tuple[str, str], Fields] = {}
    for doc in await source.counters(Selector(VELOCITY, STAGE_CUBOID, match, periods=query.periods())):
        key = (str(doc.values["pipeline_id"]), str(doc.values["stage_id"]))
        add_fields(totals.setdefault(key, {}), doc.total())
    return totals


async def velocity_rows(source: ViewSource, query: VelocityQuery) -> list[StageVelocityRow]:
    totals = await _stage_totals(source, query)
    # The median's day comes from each stage's per-day histogram, its minute from the
    # per-minute histogram of that one day: two small reads, however many stays there are.
    wanted: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for key, f in totals.items():
        count = int(f.get("stays", 0))
        if count:
            days = {int(name[5:]): int(v) for name, v in f.items() if name.startswith("hist.") and v}
            ranks = [(count + 1) // 2] if count % 2 else [count // 2, count // 2 + 1]
            wanted[key] = [_kth(days, rank) for rank in ranks]
    minutes: dict[tuple[str, str, int], dict[int, int]] = {}
    keys = [
        CounterKey(VELOCITY, DURATION_CUBOID, (*key, str(day)), period)
        for key, picks in wanted.items()
        for day in {day for day, _ in picks}
        for period in query.periods()
    ]
    for doc in await source.counters_by_key(keys):
        key3 = (str(doc.values["pipeline_id"]), str(doc.values["stage_id"]), int(str(doc.values["days"])))
        held = minutes.setdefault(key3, {})
        for name, value in doc.total().items():
            minute = int(name[8:])
            held[minute] = held.get(minute, 0) + int(value)
    info = await stage_info(source, totals)
    rows = []
    for key in sorted(totals, key=lambda k: stage_sort(k[0], k[1], info)):
        f = totals[key]
        median = None
        if key in wanted:
            values = []
            for day, rank in wanted[key]:
                minute, _ = _kth(minutes.get((*key, day), {}), rank)
                values.append(day * 1440 + minute)
            median = (Decimal(sum(values)) / len(values) / 1440).quantize(
                DAYS_QUANTUM, rounding=ROUND_HALF_EVEN
            )
        rows.append(
            StageVelocityRow(
                pipeline_id=key[0],
                stage_id=key[1],
                stage_name=_name(info, key),
                entered=int(f.get("entered", 0)),
                completed=int(f.get("stays", 0)),
                average_days=ms_to_days(f.get("duration_ms", 0), f.get("stays", 0)),
                median_days=median,
            )
        )
    return rows


async def conversion_rows(source: ViewSource, query: VelocityQuery) -> list[StageConversionRow]:
    totals = await _stage_totals(source, query)
    match: dict[str, Any] = {"pipeline_id": query.pipeline_id} if query.pipeline_id else {}
    moves: dict[tuple[str, str, str], int] = {}
    for doc in await source.counters(Selector(VELOCITY, MOVE_CUBOID, match, periods=query.periods())):
        key = (str(doc.values["pipeline_id"]), str(doc.values["stage_id"]), str(doc.values["to_stage_id"]))
        moves[key] = moves.get(key, 0) + int(doc.total().get("moves", 0))
    info = await stage_info(source, [*totals, *((p, t) for p, _, t in moves)])
    rows = []
    ordered = sorted(
        moves.items(), key=lambda m: (*stage_sort(m[0][0], m[0][1], info), stage_sort(m[0][0], m[0][2], info))
    )
    for (pipeline, stage, target), count in ordered:
        if not count:
            continue
        entered = int(totals.get((pipeline, stage), {}).get("entered", 0))
        rows.append(
            StageConversionRow(
                pipeline_id=pipeline,
                stage_id=stage,
                stage_name=_name(info, (pipeline, stage)),
                to_stage_id=target,
                to_stage_name=_name(info, (pipeline, target)),
                entered=entered,
                moves=count,
                conversion_rate=ratio(count, entered),
            )
        )
    return rows


# -- pipeline history -------------------------------------------------------------------------
class HistoryGrain(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


class PipelineHistoryQuery(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    pipeline_id: str | None = None
    stage_id: str | None = None
    period_from: date = Field(alias="from", description="First day shown (its end-of-day pipeline).")
    period_to: date = Field(alias="to", description="Days before this one are shown.")
    period: HistoryGrain = Field(
        default=HistoryGrain.DAY, description="One row per day, or per week/month end."
    )

    def match(self) -> dict[str, str]:
        chosen = {"pipeline_id": self.pipeline_id, "stage_id": self.stage_id}
        return {name: value for name, value in chosen.items() if value is not None}


class PipelineHistoryRow(BaseModel):
    day: date = Field(description="The pipeline as it stood at the end of this day (UTC).")
    pipeline_id: str
    stage_id: str
    stage_name: str | None
    currency: str
    count: int
    amount: Decimal
    weighted_amount: Decimal


def _is_row_day(day: date, query: PipelineHistoryQuery) -> bool:
    last = day + timedelta(days=1) >= query.period_to
    if query.period == HistoryGrain.DAY or last:
        return True
    tomorrow = day + timedelta(days=1)
    if query.period == HistoryGrain.WEEK:
        return tomorrow.weekday() == 0
    return tomorrow.day == 1


async def history_rows(source: ViewSource, query: PipelineHistoryQuery) -> list[PipelineHistoryRow]:
    start, end = query.period_from, query.period_to
    if end <= start:
        raise QueryError("to", "must be later than from")
    if (end - start).days > MAX_HISTORY_DAYS:
        raise QueryError("to", f"at most {MAX_HISTORY_DAYS} days")
    match = query.match()
    group = list(HISTORY_CUBOID)
    # Everything before the first day, then each day's differences in turn.
    running: dict[tuple[str | None, ...], Fields] = {}
    for (key, _), fields in (
        await read_dated(source, HISTORY, HISTORY_CUBOID, match, None, start, None, group)
    ).items():
        add_fields(running.setdefault(key, {}), fields)
    daily = await read_dated(
        source, HISTORY, HISTORY_CUBOID, match, start, end, Grain.DAY, group, MAX_HISTORY_DAYS
    )
    by_day: dict[date, list[tuple[tuple[str | None, ...], Fields]]] = {}
    for (key, day), fields in daily.items():
        assert day is not None
        by_day.setdefault(day, []).append((key, fields))
    info = await stage_info(source, [(k[0], k[1]) for k in {*running, *(k for k, _ in daily)}])
    rows = []
    for day in _days(start, end):
        for key, fields in by_day.get(day, []):
            add_fields(running.setdefault(key, {}), fields)
        if not _is_row_day(day, query):
            continue
        for key in sorted(running, key=lambda k: (*stage_sort(k[0], k[1], info), sort_key(k[2]))):
            f = running[key]
            if not f.get("count"):
                continue
            pipeline, stage, currency = (str(v) for v in key)
            rows.append(
                PipelineHistoryRow(
                    day=day,
                    pipeline_id=pipeline,
                    stage_id=stage,
                    stage_name=_name(info, (pipeline, stage)),
                    currency=currency,
                    count=int(f["count"]),
                    amount=from_cents(f.get("amount")),
                    weighted_amount=from_ten_thousandths(f.get("weighted_amount")),
                )
            )
    return rows


# -- campaign ROI -----------------------------------------------------------------------------
class CampaignRoiQuery(BaseModel):
    model_config = ConfigDict(frozen=True)

    campaign_id: str | None = None
    status: CampaignStatus | None = None
    type: CampaignType | None = None


def unknown_campaign_name(campaign_id: str) -> str:
    """How a campaign that leads or opportunities name, but no campaign event has defined
    here, is shown: named as unknown, never as a blank row."""
    return f"(unknown campaign {campaign_id})"


class CampaignRoiRow(BaseModel):
    campaign_id: str
    name: str | None = Field(
        description="The campaign's name; for a campaign reporting has no campaign.created or "
        "campaign.updated for, '(unknown campaign <id>)' (and known is false) until it arrives."
    )
    known: bool = Field(
        default=True,
        description="False when leads, members or opportunities name the campaign but no campaign "
        "event defined it (a wrong id in a form or an import, or a campaign created later).",
    )
    type: CampaignType | None
    status: CampaignStatus | None
    currency: str | None
    budgeted_cost: Decimal | None
    actual_cost: Decimal
    members: int
    leads: int
    converted_leads: int
    conversion_rate: Decimal | None = Field(
        deprecated=DEPRECATED_ALIAS.format(new="lead_conversion_rate"),
        description="converted_leads / leads * 100: lead_conversion_rate in percent (two decimals), "
        "as the campaigns service's summary has it. " + DEPRECATED_ALIAS.format(new="lead_conversion_rate"),
    )
    opportunities: int
    won_opportunities: int
    lost_opportunities: int
    won_revenue: Decimal = Field(description="Won amounts in the campaign's currency.")
    won_revenue_in_other_currencies: dict[str, Decimal]
    cost_per_lead: Decimal | None = Field(
        description="actual_cost / leads: to the cent (half up); null without leads."
    )
    roi: Decimal | None = Field(
        description="(won_revenue - actual_cost) / actual_cost: return on the money spent, four "
        "decimals (half up); null while nothing was spent."
    )
    lead_conversion_rate: Decimal | None = Field(
        description="converted_leads / leads: the captured leads that were converted." + RATE_NOTE
    )


# The campaigns service's summary figures (crm_campaigns.domain), computed the same way.
def cost_per_lead(actual_cost: Decimal, leads: int) -> Decimal | None:
    if leads <= 0:
        return None
    return (actual_cost / leads).quantize(AMOUNT_QUANTUM, rounding=ROUND_HALF_UP)


def lead_conversion_percent(converted_leads: int, leads: int) -> Decimal | None:
    if leads <= 0:
        return None
    return (Decimal(converted_leads) * 100 / leads).quantize(AMOUNT_QUANTUM, rounding=ROUND_HALF_UP)


def return_on_investment(won_revenue: Decimal, actual_cost: Decimal) -> Decimal | None:
    if actual_cost <= 0:
        return None
    return ((won_revenue - actual_cost) / actual_cost).quantize(RATE_QUANTUM, rounding=ROUND_HALF_UP)


async def campaign_roi_rows(source: ViewSource, query: CampaignRoiQuery) -> list[CampaignRoiRow]:
    match: dict[str, Any] = {"campaign_id": query.campaign_id} if query.campaign_id else {}
    counts = {
        str(doc.values["campaign_id"]): doc.total()
        for doc in await source.counters(Selector(CAMPAIGNS, CAMPAIGN_CUBOID, match, periods=(ALL,)))
    }
    facts = {
        c.campaign_id: c for c in await source.campaigns([query.campaign_id] if query.campaign_id else None)
    }
    rows = []
    for campaign_id in sorted(set(counts) | set(facts)):
        fact = facts.get(campaign_id)
        if (query.status and (fact is None or fact.status != query.status)) or (
            query.type and (fact is None or fact.type != query.type)
        ):
            continue
        f = counts.get(campaign_id, {})
        if fact is None and not any(f.values()):
            continue  # known only from counts that went back to zero
        currency = fact.currency if fact else None
        amounts = by_currency(f, "won_amount")
        revenue = from_cents(amounts.pop(currency, 0) if currency else 0)
        actual = money(fact.actual_cost if fact else 0)
        leads, converted = int(f.get("leads", 0)), int(f.get("converted_leads", 0))
        rows.append(
            CampaignRoiRow(
                campaign_id=campaign_id,
                name=fact.name if fact and fact.name else unknown_campaign_name(campaign_id),
                known=fact is not None and fact.name is not None,
                type=fact.type if fact else None,
                status=fact.status if fact else None,
                currency=currency,
                budgeted_cost=fact.budgeted_cost if fact else None,
                actual_cost=actual,
                members=int(f.get("members", 0)),
                leads=leads,
                converted_leads=converted,
                conversion_rate=lead_conversion_percent(converted, leads),
                opportunities=int(f.get("opportunities", 0)),
                won_opportunities=int(f.get("won_opportunities", 0)),
                lost_opportunities=int(f.get("lost_opportunities", 0)),
                won_revenue=revenue,
                won_revenue_in_other_currencies={c: from_cents(v) for c, v in sorted(amounts.items())},
                cost_per_lead=cost_per_lead(actual, leads),
                roi=return_on_investment(revenue, actual),
                lead_conversion_rate=ratio(converted, leads),
            )
        )
    return rows


def utcnow() -> datetime:
    return datetime.now(UTC)
