"""Every view recomputed the straightforward way: loops over the final facts, no counters, no
periods tiling, no histograms. The incremental read models must give exactly these rows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from statistics import median
from typing import Any

from crm_contracts.events.leads import default_picklist_values
from crm_contracts.events.opportunities import StageKind, default_loss_reason_values
from crm_contracts.events.picklists import PicklistName
from crm_reporting.domain import FUNNEL_STEPS, LeadFacts, OpportunityFacts, value_of
from crm_reporting.memory import MemoryFactStore
from crm_reporting.views import (
    CampaignRoiQuery,
    CampaignRoiRow,
    ForecastQuery,
    ForecastRow,
    FunnelCounts,
    FunnelQuery,
    FunnelRow,
    Grain,
    LeadSourceQuery,
    LeadSourceRow,
    PeriodBasis,
    PipelineGrouping,
    PipelineHistoryQuery,
    PipelineHistoryRow,
    PipelineQuery,
    PipelineRow,
    StageConversionRow,
    StageVelocityRow,
    VelocityQuery,
    WinLossQuery,
    WinLossRow,
    cost_per_lead,
    funnel_row,
    lead_conversion_percent,
    ms_to_days,
    ratio,
    return_on_investment,
)

CENT = Decimal("0.01")
FOUR = Decimal("0.0001")
CATEGORY_ORDER = ["omitted", "pipeline", "best_case", "commit", "closed"]


def day_of(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def in_range(day: date, start: date | None, end: date | None) -> bool:
    return (start is None or day >= start) and (end is None or day < end)


def period_start(day: date, grain: Grain | None) -> date | None:
    if grain is None:
        return None
    return {
        Grain.DAY: day,
        Grain.WEEK: day - timedelta(days=day.weekday()),
        Grain.MONTH: date(day.year, day.month, 1),
        Grain.QUARTER: date(day.year, 3 * ((day.month - 1) // 3) + 1, 1),
        Grain.YEAR: date(day.year, 1, 1),
    }[grain]


def none_last(value: Any) -> tuple[bool, str]:
    return (value is None, "" if value is None else str(value))


def counted_leads(store: MemoryFactStore) -> Iterable[LeadFacts]:
    return (lead for lead in store.leads.values() if value_of(lead.status) != "merged")


def products_of(opp: OpportunityFacts) -> list[str | None]:
    return list(sorted(set(opp.product_ids))) or [None]


def sales_value(opp: OpportunityFacts, name: str) -> list[str | None]:
    if name == "product_id":
        return products_of(opp)
    if name == "lead_source":
        return [value_of(opp.attributed_lead_source)]
    if name == "campaign_id":
        return [opp.attributed_campaign_id]
    if name == "loss_reason":
        return [opp.loss_reason if opp.stage_kind == StageKind.CLOSED_LOST else None]
    return [getattr(opp, name)]


# -- funnel -----------------------------------------------------------------------------------
def funnel(store: MemoryFactStore, q: FunnelQuery) -> list[FunnelRow]:
    counts: dict[tuple[str | None, date | None], FunnelCounts] = defaultdict(FunnelCounts)
    for lead in counted_leads(store):
        if any(value_of(getattr(lead, name)) != wanted for name, wanted in q.match().items()):
            continue
        group = value_of(getattr(lead, q.group_by.value)) if q.group_by else None
        steps = lead.funnel
        if q.basis == PeriodBasis.COHORT:
            if steps.captured and in_range(day_of(steps.captured), q.period_from, q.period_to):
                reached = [int(getattr(steps, s) is not None) for s in FUNNEL_STEPS]
                counts[(group, period_start(day_of(steps.captured), q.period))] += FunnelCounts(*reached)
            continue
        for index, step in enumerate(FUNNEL_STEPS):
            moment = getattr(steps, step)
            if moment is not None and in_range(day_of(moment), q.period_from, q.period_to):
                one = [int(i == index) for i in range(len(FUNNEL_STEPS))]
                counts[(group, period_start(day_of(moment), q.period))] += FunnelCounts(*one)
    if q.group_by is None and q.period is None:
        return [funnel_row(None, None, None, counts.get((None, None), FunnelCounts()))]
    names = {c.campaign_id: c.name for c in store.campaigns.values()} if q.group_by == "campaign_id" else {}
    keys = sorted((k for k, v in counts.items() if v), key=lambda k: (none_last(k[0]), none_last(k[1])))
    return [funnel_row(g, names.get(g) if g else None, p, counts[(g, p)]) for g, p in keys]


# -- pipeline and forecast --------------------------------------------------------------------
def stage_orders(store: MemoryFactStore) -> dict[tuple[str, str], tuple[datetime, str, int | None]]:
    """Newest (time, name, order) seen for each stage."""
    seen: dict[tuple[str, str], tuple[datetime, str, int | None]] = {}
    for opp in store.opportunities.values():
        for r in opp.revisions:
            key = (r.pipeline_id, r.stage_id)
            if key not in seen or (r.at, r.stage_name) > seen[key][:2]:
                seen[key] = (r.at, r.stage_name, seen.get(key, (r.at, "", None))[2])
            if r.previous_stage_id and r.previous_stage_name:
                prev = (r.pipeline_id, r.previous_stage_id)
                if prev not in seen or (r.at, r.previous_stage_name) > seen[prev][:2]:
                    seen[prev] = (r.at, r.previous_stage_name, seen.get(prev, (r.at, "", None))[2])
    orders: dict[tuple[str, str], tuple[datetime, str]] = {}
    for opp in store.opportunities.values():
        for r in opp.revisions:
            key = (r.pipeline_id, r.stage_id)
            if r.stage_order is not None and (key not in orders or (r.at, str(r.stage_order)) > orders[key]):
                orders[key] = (r.at, str(r.stage_order))
    return {k: (v[0], v[1], int(orders[k][1]) if k in orders else None) for k, v in seen.items()}


def stage_key(
    info: dict[tuple[str, str], tuple[datetime, str, int | None]], pipeline: Any, stage: Any
) -> tuple[Any, ...]:
    order = info.get((str(pipeline), str(stage)), (None, None, None))[2]
    return (none_last(pipeline), order is None, order or 0, none_last(stage))


def stage_name(
    info: dict[tuple[str, str], tuple[datetime, str, int | None]], pipeline: Any, stage: Any
) -> str | None:
    found = info.get((str(pipeline), str(stage)))
    return found[1] if found else None


def sales_match(opp: OpportunityFacts, match: dict[str, str | None]) -> bool:
    return all(wanted in sales_value(opp, name) for name, wanted in match.items())


GROUP_FIELDS = {
    PipelineGrouping.STAGE: ("pipeline_id", "stage_id"),
    PipelineGrouping.PIPELINE: ("pipeline_id",),
    PipelineGrouping.OWNER: ("owner_id",),
    PipelineGrouping.SALES_TEAM: ("sales_team_id",),
    PipelineGrouping.SALES_REGION: ("sales_region",),
    PipelineGrouping.ACCOUNT_INDUSTRY: ("account_industry",),
    PipelineGrouping.PRODUCT: ("product_id",),
}


def pipeline(store: MemoryFactStore, q: PipelineQuery, now: datetime) -> list[PipelineRow]:
    cells: dict[tuple[Any, ...], list[Any]] = {}
    fields = GROUP_FIELDS[q.group_by]
    for opp in store.opportunities.values():
        if not opp.is_open or opp.amount is None or opp.currency is None or not sales_match(opp, q.match()):
            continue
        groups = products_of(opp) if "product_id" in fields else [None]
        for product in groups:
            values = {name: product if name == "product_id" else getattr(opp, name) for name in fields}
            key = (*(values[name] for name in fields), opp.currency)
            cell = cells.setdefault(key, [0, Decimal(0), Decimal(0), []])
            cell[0] += 1
            cell[1] += opp.amount
            cell[2] += opp.weighted_amount or 0
            if opp.created_at is not None:
                cell[3].append(opp.created_at)
    info = stage_orders(store)
    rows = []
    for key, (count, amount, weighted, created) in cells.items():
        values = dict(zip(fields, key[:-1], strict=True))
        now_ms = int(now.timestamp() * 1000)
        age_ms = sum(now_ms - int(c.timestamp() * 1000) for c in created)
        rows.append(
            PipelineRow(
                pipeline_id=values.get("pipeline_id"),
                stage_id=values.get("stage_id"),
                stage_name=stage_name(info, values.get("pipeline_id"), values.get("stage_id")),
                owner_id=values.get("owner_id"),
                sales_team_id=values.get("sales_team_id"),
                sales_region=values.get("sales_region"),
                account_industry=values.get("account_industry"),
                product_id=values.get("product_id"),
                currency=key[-1],
                count=count,
                amount=amount.quantize(CENT),
                weighted_amount=weighted.quantize(FOUR),
                average_age_days=ms_to_days(age_ms, len(created)),
            )
        )
    sales = ("owner_id", "sales_team_id", "sales_region", "account_industry", "product_id")
    rows.sort(
        key=lambda r: (
            *stage_key(info, r.pipeline_id, r.stage_id),
            *(none_last(getattr(r, n)) for n in sales),
            r.currency,
        )
    )
    return rows


def forecast(store: MemoryFactStore, q: ForecastQuery) -> list[ForecastRow]:
    cells: dict[tuple[Any, ...], list[Any]] = {}
    for opp in store.opportunities.values():
        won = opp.stage_kind == StageKind.CLOSED_WON
        if not (opp.is_open or won) or opp.amount is None or not sales_match(opp, q.match()):
            continue
        close = day_of(opp.closed_at) if won and opp.closed_at else opp.expected_close_date
        month = f"{close.year:04d}-{close.month:02d}" if close else None
        if not q.selects(month):
            continue
        key = (month, opp.forecast_category, opp.currency)
        cell = cells.setdefault(key, [0, Decimal(0), Decimal(0)])
        cell[0] += 1
        cell[1] += opp.amount
        cell[2] += opp.weighted_amount or 0
    rows = [
        ForecastRow(
            close_month=k[0],
            forecast_category=k[1],
            currency=k[2],
            count=c[0],
            amount=c[1].quantize(CENT),
            weighted_amount=c[2].quantize(FOUR),
        )
        for k, c in cells.items()
    ]
    rows.sort(
        key=lambda r: (none_last(r.close_month), CATEGORY_ORDER.index(r.forecast_category.value), r.currency)
    )
    return rows


# -- win/loss and lead sources ----------------------------------------------------------------
def _deal_figures(
    store: MemoryFactStore, match: dict[str, str | None], group: str | None, q: Any
) -> dict[Any, dict[str, Any]]:
    """Per (group, period): created, won, lost, won amounts and counts per currency, cycles."""
    out: dict[Any, dict[str, Any]] = defaultdict(
        lambda: {
            "created": 0,
            "won": 0,
            "lost": 0,
            "amounts": defaultdict(Decimal),
            "deals": defaultdict(int),
            "wc": [],
            "lc": [],
        }
    )
    for opp in store.opportunities.values():
        if not sales_match(opp, match):
            continue
        for value in sales_value(opp, group) if group else [None]:
            if opp.created_at and in_range(day_of(opp.created_at), q.period_from, q.period_to):
                out[(value, period_start(day_of(opp.created_at), q.period))]["created"] += 1
            if opp.is_closed and opp.closed_at and opp.amount is not None and opp.currency:
                if not in_range(day_of(opp.closed_at), q.period_from, q.period_to):
                    continue
                cell = out[(value, period_start(day_of(opp.closed_at), q.period))]
                cycle = None
                if opp.created_at:
                    cycle = max(
                        int(opp.closed_at.timestamp() * 1000) - int(opp.created_at.timestamp() * 1000), 0
                    )
                if opp.stage_kind == StageKind.CLOSED_WON:
                    cell["won"] += 1
                    cell["amounts"][opp.currency] += opp.amount
                    cell["deals"][opp.currency] += 1
                    if cycle is not None:
                        cell["wc"].append(cycle)
                else:
                    cell["lost"] += 1
                    if cycle is not None:
                        cell["lc"].append(cycle)
    return out


def win_loss(store: MemoryFactStore, q: WinLossQuery) -> list[WinLossRow]:
    group = q.group_by.value if q.group_by else None
    rows = []
    figures = _deal_figures(store, q.match(), group, q)
    for key in sorted(figures, key=lambda k: (none_last(k[0]), none_last(k[1]))):
        f = figures[key]
        if not (f["won"] or f["lost"] or f["created"]):
            continue
        amounts = dict(f["amounts"])
        revenue = amounts.pop(q.currency, Decimal(0)).quantize(CENT)
        rows.append(
            WinLossRow(
                group=key[0],
                period=key[1],
                opportunities_created=f["created"],
                won=f["won"],
                lost=f["lost"],
                win_rate=ratio(f["won"], f["won"] + f["lost"]),
                currency=q.currency,
                won_revenue=revenue,
                average_deal_size=ratio(revenue, f["deals"].get(q.currency, 0), CENT),
                won_revenue_in_other_currencies={
                    c: v.quantize(CENT) for c, v in sorted(amounts.items()) if v
                },
                average_cycle_days=ms_to_days(sum(f["wc"]) + sum(f["lc"]), len(f["wc"]) + len(f["lc"])),
                average_won_cycle_days=ms_to_days(sum(f["wc"]), len(f["wc"])),
                # the story revises no picklist: the default loss reasons' labels
                label=DEFAULT_LOSS_REASON_LABELS.get(key[0] or "") if q.group_by == "loss_reason" else None,
            )
        )
    return rows


DEFAULT_LOSS_REASON_LABELS = {v.value: v.label for v in default_loss_reason_values()}
DEFAULT_SOURCE_LABELS = {v.value: v.label for v in default_picklist_values(PicklistName.LEAD_SOURCE)}


def lead_sources(store: MemoryFactStore, q: LeadSourceQuery) -> list[LeadSourceRow]:
    match = {"campaign_id": q.campaign_id} if q.campaign_id else {}
    leads: dict[Any, list[int]] = defaultdict(lambda: [0, 0, 0])
    for lead in counted_leads(store):
        if q.campaign_id and lead.campaign_id != q.campaign_id:
            continue
        steps = lead.funnel
        for index, moment in enumerate((steps.captured, steps.qualified, steps.converted)):
            if moment and in_range(day_of(moment), q.period_from, q.period_to):
                leads[(value_of(lead.lead_source), period_start(day_of(moment), q.period))][index] += 1
    deals = _deal_figures(store, match, "lead_source", q)
    rows = []
    for key in sorted(set(leads) | set(deals), key=lambda k: (none_last(k[0]), none_last(k[1]))):
        counts, f = leads.get(key, [0, 0, 0]), deals.get(key)
        won, lost, created = (f["won"], f["lost"], f["created"]) if f else (0, 0, 0)
        if not any(counts) and not (won or lost or created):
            continue
        amounts = dict(f["amounts"]) if f else {}
        rows.append(
            LeadSourceRow(
                lead_source=key[0],
                label=DEFAULT_SOURCE_LABELS.get(key[0]) if key[0] else None,  # the story revises no picklist
                period=key[1],
                leads=counts[0],
                qualified=counts[1],
                converted=counts[2],
                opportunities=created,
                won=won,
                lost=lost,
                currency=q.currency,
                won_revenue=amounts.pop(q.currency, Decimal(0)).quantize(CENT),
                won_revenue_in_other_currencies={
                    c: v.quantize(CENT) for c, v in sorted(amounts.items()) if v
                },
                qualified_rate=ratio(counts[1], counts[0]),
                converted_rate=ratio(counts[2], counts[0]),
                win_rate=ratio(won, won + lost),
                lead_conversion_rate=ratio(counts[2], counts[0]),
            )
        )
    return rows


# -- velocity ---------------------------------------------------------------------------------
def _months(q: VelocityQuery) -> set[str] | None:
    if q.period_from is None or q.period_to is None:
        return None
    months, day = set(), q.period_from
    while day < q.period_to:
        months.add(f"{day.year:04d}-{day.month:02d}")
        day = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return months


def _month(moment: datetime) -> str:
    d = day_of(moment)
    return f"{d.year:04d}-{d.month:02d}"


def _stays(
    store: MemoryFactStore, q: VelocityQuery
) -> tuple[dict[Any, int], dict[Any, list[int]], dict[Any, int]]:
    months = _months(q)
    entered: dict[Any, int] = defaultdict(int)
    durations: dict[Any, list[int]] = defaultdict(list)
    moves: dict[Any, int] = defaultdict(int)
    for opp in store.opportunities.values():
        for stay in opp.stays():
            if stay.stage_kind != StageKind.OPEN or (q.pipeline_id and stay.pipeline_id != q.pipeline_id):
                continue
            key = (stay.pipeline_id, stay.stage_id)
            if months is None or _month(stay.entered_at) in months:
                entered[key] += 1
            if stay.left_at is not None and (months is None or _month(stay.left_at) in months):
                durations[key].append((stay.left_at - stay.entered_at) // timedelta(milliseconds=1))
                moves[(*key, stay.moved_to)] += 1
    return entered, durations, moves


def velocity(store: MemoryFactStore, q: VelocityQuery) -> list[StageVelocityRow]:
    entered, durations, _ = _stays(store, q)
    info = stage_orders(store)
    rows = []
    for key in sorted(set(entered) | set(durations), key=lambda k: stage_key(info, *k)):
        spans = [max(d, 0) for d in durations.get(key, [])]
        # The median of the durations cut to whole minutes.
        middle = median([d // 60000 for d in spans]) if spans else None
        rows.append(
            StageVelocityRow(
                pipeline_id=key[0],
                stage_id=key[1],
                stage_name=stage_name(info, *key),
                entered=entered.get(key, 0),
                completed=len(spans),
                average_days=ms_to_days(sum(spans), len(spans)),
                median_days=(Decimal(middle) / 1440).quantize(FOUR) if middle is not None else None,
            )
        )
    return rows


def conversion(store: MemoryFactStore, q: VelocityQuery) -> list[StageConversionRow]:
    entered, _, moves = _stays(store, q)
    info = stage_orders(store)
    ordered = sorted(moves, key=lambda m: (*stage_key(info, m[0], m[1]), stage_key(info, m[0], m[2])))
    return [
        StageConversionRow(
            pipeline_id=p,
            stage_id=s,
            stage_name=stage_name(info, p, s),
            to_stage_id=t,
            to_stage_name=stage_name(info, p, t),
            entered=entered.get((p, s), 0),
            moves=moves[(p, s, t)],
            conversion_rate=ratio(moves[(p, s, t)], entered.get((p, s), 0)),
        )
        for p, s, t in ordered
    ]


# -- pipeline history -------------------------------------------------------------------------
def history(store: MemoryFactStore, q: PipelineHistoryQuery) -> list[PipelineHistoryRow]:
    info = stage_orders(store)
    rows = []
    day = q.period_from
    while day < q.period_to:
        tomorrow = day + timedelta(days=1)
        shown = (
            q.period.value == "day"
            or tomorrow >= q.period_to
            or (q.period.value == "week" and tomorrow.weekday() == 0)
            or (q.period.value == "month" and tomorrow.day == 1)
        )
        if shown:
            end = datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=UTC)
            cells: dict[tuple[str, str, str], list[Any]] = {}
            for opp in store.opportunities.values():
                state = opp.state_at(end)
                if state is None or not state.is_open:
                    continue
                if (q.pipeline_id and state.pipeline_id != q.pipeline_id) or (
                    q.stage_id and state.stage_id != q.stage_id
                ):
                    continue
                cell = cells.setdefault(
                    (state.pipeline_id, state.stage_id, state.currency), [0, Decimal(0), Decimal(0)]
                )
                cell[0] += 1
                cell[1] += state.amount
                cell[2] += state.weighted_amount
            for key in sorted(cells, key=lambda k: (*stage_key(info, k[0], k[1]), k[2])):
                count, amount, weighted = cells[key]
                rows.append(
                    PipelineHistoryRow(
                        day=day,
                        pipeline_id=key[0],
                        stage_id=key[1],
                        stage_name=stage_name(info, key[0], key[1]),
                        currency=key[2],
                        count=count,
                        amount=amount.quantize(CENT),
                        weighted_amount=weighted.quantize(FOUR),
                    )
                )
        day = tomorrow
    return rows


# -- campaign ROI -----------------------------------------------------------------------------
def campaign_roi(store: MemoryFactStore, q: CampaignRoiQuery) -> list[CampaignRoiRow]:
    ids = {c for c in store.campaigns} | {c for c, _ in store.members}
    ids |= {lead.campaign_id for lead in counted_leads(store) if lead.campaign_id}
    ids |= {
        o.attributed_campaign_id
        for o in store.opportunities.values()
        if o.attributed_campaign_id and o.stage_kind
    }
    rows = []
    for campaign_id in sorted(ids):
        fact = store.campaigns.get(campaign_id)
        if q.campaign_id and campaign_id != q.campaign_id:
            continue
        if (q.status and (not fact or fact.status != q.status)) or (
            q.type and (not fact or fact.type != q.type)
        ):
            continue
        leads = [lead for lead in counted_leads(store) if lead.campaign_id == campaign_id]
        converted = sum(1 for lead in leads if lead.converted_at is not None)
        opps = [
            o
            for o in store.opportunities.values()
            if o.attributed_campaign_id == campaign_id and o.stage_kind
        ]
        won = [o for o in opps if o.stage_kind == StageKind.CLOSED_WON]
        currency = fact.currency if fact else None
        amounts: dict[str, Decimal] = defaultdict(Decimal)
        for o in won:
            if o.currency and o.amount is not None:
                amounts[o.currency] += o.amount
        revenue = amounts.pop(currency, Decimal(0)).quantize(CENT) if currency else Decimal("0.00")
        actual = (fact.actual_cost if fact and fact.actual_cost is not None else Decimal(0)).quantize(CENT)
        rows.append(
            CampaignRoiRow(
                campaign_id=campaign_id,
                name=fact.name if fact and fact.name else f"(unknown campaign {campaign_id})",
                known=fact is not None and fact.name is not None,
                type=fact.type if fact else None,
                status=fact.status if fact else None,
                currency=currency,
                budgeted_cost=fact.budgeted_cost if fact else None,
                actual_cost=actual,
                members=sum(1 for c, _ in store.members if c == campaign_id),
                leads=len(leads),
                converted_leads=converted,
                conversion_rate=lead_conversion_percent(converted, len(leads)),
                opportunities=len(opps),
                won_opportunities=len(won),
                lost_opportunities=sum(1 for o in opps if o.stage_kind == StageKind.CLOSED_LOST),
                won_revenue=revenue,
                won_revenue_in_other_currencies={
                    c: v.quantize(CENT) for c, v in sorted(amounts.items()) if v
                },
                cost_per_lead=cost_per_lead(actual, len(leads)),
                roi=return_on_investment(revenue, actual),
                lead_conversion_rate=ratio(converted, len(leads)),
            )
        )
    return rows
