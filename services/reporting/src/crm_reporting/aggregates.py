"""How facts count in the views: each fact's *contribution* to counter documents, and the
difference a change of the fact makes. No I/O.

A counter document is keyed by (view, cuboid, dimension values, period). A cuboid is the set
of dimensions a view is broken down by (``("lead_source", "campaign_id")``); the period is
``"all"`` (current state), a year ``"2026"`` or a month ``"2026-03"``. Dated figures (a lead
captured on 5 March 2026) count in the month document, with a per-day breakdown
(``days.05.<field>``), and in the year document, with a per-month breakdown
(``months.03.<field>``), so any range of days, weeks, months, quarters or years is answered
from a few documents.

When a fact changes, ``tally(new) - tally(old)`` is what the counters must change by. Since
the old fact is the stored one and facts are folded order-independently, the sum of all the
differences ever applied is the tally of the final facts, whatever the order and however many
duplicates came: the counters converge exactly as the facts do. Stage names are kept as
``$max`` of "time|name" (the newest name wins), which is order-independent too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import combinations
from typing import Any

from crm_contracts.events.opportunities import PipelineDefined, StageKind
from crm_contracts.events.picklists import PicklistRevised

from .domain import FUNNEL_STEPS, CampaignFacts, LeadFacts, OpportunityFacts, Revision, value_of

Number = int | Decimal
Fields = dict[str, Number]
Cuboid = tuple[str, ...]

ALL = "all"
TOTALS = "t"  # a counter document's totals; "days"/"months" hold its per-day/per-month shares
EVERYTHING = "*"  # the tag every counter document has: queries without a filter use it too
MERGED = "merged"  # the lead status of a duplicate merged into a surviving lead
# A counter field's high part, stored beside it as "<field>~hi" ('~' is in no field name): the
# field's value is field + HIGH_BASE * field~hi, so sums beyond int64 stay exact (``deltas``).
HIGH = "~hi"
HIGH_BASE = 10**9
DAY_MS = 86_400_000
CENT = Decimal("0.01")
TEN_THOUSANDTH = Decimal("0.0001")
MINUTE_MS = 60_000

# One collection per view (and the stage names), in each generation.
FUNNEL = "funnel_counts"
PIPELINE = "pipeline_counts"
FORECAST = "forecast_counts"
WIN_LOSS = "win_loss_counts"
VELOCITY = "velocity_counts"
HISTORY = "pipeline_history_counts"
CAMPAIGNS = "campaign_counts"
STAGES = "stage_names"
LABELS = "picklist_labels"
COUNTER_VIEWS: tuple[str, ...] = (
    FUNNEL,
    PIPELINE,
    FORECAST,
    WIN_LOSS,
    VELOCITY,
    HISTORY,
    CAMPAIGNS,
    STAGES,
    LABELS,
)


def with_pairs(dimensions: Cuboid, pairs: Iterable[tuple[str, str]]) -> tuple[Cuboid, ...]:
    """The total, each dimension alone, and the given pairs: a view grouped by one dimension
    and filtered by another is answered by one of these."""
    return ((), *((d,) for d in dimensions), *pairs)


def _scoped_pairs(scopes: Cuboid, dimensions: Cuboid) -> list[tuple[str, str]]:
    """Each scope (a filter BI asks a lot: a rep's, a team's numbers) with every dimension."""
    pairs: list[tuple[str, str]] = []
    for scope in scopes:
        pairs += [(scope, d) for d in dimensions if d != scope and (d, scope) not in pairs]
    return pairs


UTM_DIMENSIONS: Cuboid = ("utm_source", "utm_medium", "utm_campaign")
FUNNEL_DIMENSIONS: Cuboid = ("lead_source", "origin", "campaign_id", "rating", "owner_id", *UTM_DIMENSIONS)
# UTM pairs: a source's lead sources, mediums and campaigns (each pair is one more counter
# document per lead and period, so only the pairs a marketer asks for are kept).
UTM_PAIRS: tuple[tuple[str, str], ...] = (
    ("lead_source", "utm_source"),
    ("utm_source", "utm_medium"),
    ("utm_source", "utm_campaign"),
)
FUNNEL_CUBOIDS = with_pairs(
    FUNNEL_DIMENSIONS, [*combinations(("lead_source", "campaign_id", "rating", "owner_id"), 2), *UTM_PAIRS]
)
# Who sells and what: an opportunity with several products counts under each of them.
SALES_DIMENSIONS: Cuboid = ("owner_id", "sales_team_id", "sales_region", "account_industry", "product_id")
SCOPES: Cuboid = ("owner_id", "sales_team_id")
# The sales views always keep the pipeline (few values, filtered often); money views the
# currency too: amounts in different currencies are never added.
WIN_LOSS_DIMENSIONS: Cuboid = (*SALES_DIMENSIONS, "lead_source", "campaign_id", "loss_reason")
WIN_LOSS_CUBOIDS: tuple[Cuboid, ...] = tuple(
    ("pipeline_id", *cuboid)
    for cuboid in with_pairs(
        WIN_LOSS_DIMENSIONS, [*_scoped_pairs(SCOPES, WIN_LOSS_DIMENSIONS), ("lead_source", "campaign_id")]
    )
)
PIPELINE_DIMENSIONS: Cuboid = ("stage_id", *SALES_DIMENSIONS)
PIPELINE_CUBOIDS: tuple[Cuboid, ...] = tuple(
    ("pipeline_id", *cuboid, "currency")
    for cuboid in with_pairs(PIPELINE_DIMENSIONS, _scoped_pairs(("stage_id", *SCOPES), PIPELINE_DIMENSIONS))
)
FORECAST_CUBOIDS: tuple[Cuboid, ...] = tuple(
    ("close_month", "forecast_category", "pipeline_id", *extra, "currency")
    for extra in ((), *((d,) for d in SALES_DIMENSIONS))
)
HISTORY_CUBOID: Cuboid = ("pipeline_id", "stage_id", "currency")
STAGE_CUBOID: Cuboid = ("pipeline_id", "stage_id")
MOVE_CUBOID: Cuboid = ("pipeline_id", "stage_id", "to_stage_id")
DURATION_CUBOID: Cuboid = ("pipeline_id", "stage_id", "days")
LABEL_CUBOID: Cuboid = ("picklist", "value")
CAMPAIGN_CUBOID: Cuboid = ("campaign_id",)


@dataclass(frozen=True)
class CounterKey:
    view: str
    cuboid: Cuboid
    values: tuple[str | None, ...]
    period: str

    @property
    def doc_id(self) -> str:
        return json.dumps([cuboid_name(self.cuboid), self.period, *self.values], separators=(",", ":"))

    @classmethod
    def of_doc_id(cls, view: str, doc_id: str) -> CounterKey:
        """The key a counter document id was made from (``doc_id``'s inverse)."""
        name, period, *values = json.loads(doc_id)
        cuboid: Cuboid = () if name == cuboid_name(()) else tuple(name.split("+"))
        return cls(view, cuboid, tuple(values), period)

    @property
    def grain(self) -> str:
        return grain_of(self.period)

    def labels(self) -> dict[str, Any]:
        """What a counter document says about itself (its ``k`` field), for queries: the
        dimension values by name, and as ``tags`` ("owner_id=rep-7") for one multikey index,
        which serves a filter on any dimension with one index entry per dimension held."""
        values = dict(zip(self.cuboid, self.values, strict=True))
        return {
            "cuboid": cuboid_name(self.cuboid),
            "period": self.period,
            "grain": self.grain,
            **values,
            "tags": [EVERYTHING, *(tag(name, value) for name, value in values.items() if value is not None)],
        }


def cents(amount: Decimal) -> int:
    """Money in counters is an exact integer: BSON's Decimal128 is slow to add up and to
    decode, int64 is neither. Sums beyond int64 are stored in two fields (``HIGH``)."""
    return int(amount.quantize(CENT) * 100)


def ten_thousandths(weighted: Decimal) -> int:
    """Weighted amounts (four decimals) as an exact integer of 1/10,000."""
    return int(weighted.quantize(TEN_THOUSANDTH) * 10_000)


def tag(name: str, value: str) -> str:
    return f"{name}={value}"


def cuboid_name(cuboid: Cuboid) -> str:
    return "+".join(cuboid) or "total"


def grain_of(period: str) -> str:
    if period == ALL:
        return ALL
    return "year" if len(period) == 4 else "month"


def year_period(day: date) -> str:
    return f"{day.year:04d}"


def month_period(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def utc_day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def name_tag(moment: datetime, name: str) -> str:
    """A name stamped with when it was seen; the greatest tag is the newest name (fixed-width
    ISO time first, so strings compare as times)."""
    return f"{moment.astimezone(UTC).isoformat(timespec='milliseconds')}|{name}"


def name_of(tag: str) -> str:
    return tag.split("|", 1)[1]


@dataclass
class Tally:
    """Counter increments by key, and newest-wins names by key."""

    counts: dict[CounterKey, Fields] = field(default_factory=dict)
    names: dict[CounterKey, dict[str, str]] = field(default_factory=dict)

    def add(self, key: CounterKey, fields: Mapping[str, Number], sign: int = 1) -> None:
        held = self.counts.setdefault(key, {})
        for name, value in fields.items():
            total = held.get(name, 0) + sign * value
            if total:
                held[name] = total
            else:
                held.pop(name, None)
        if not held:
            del self.counts[key]

    def add_total(self, key: CounterKey, fields: Mapping[str, Number]) -> None:
        """``fields`` into the document's totals (``t``)."""
        self.add(key, {f"{TOTALS}.{name}": value for name, value in fields.items()})

    def add_dated(
        self, view: str, cuboid: Cuboid, values: tuple[str | None, ...], moment: datetime, fields: Fields
    ) -> None:
        """``fields`` as of ``moment``'s day: in its month (per day) and its year (per month)."""
        day = utc_day(moment)
        self.add(
            CounterKey(view, cuboid, values, month_period(day)), _with_part(fields, f"days.{day.day:02d}")
        )
        self.add(
            CounterKey(view, cuboid, values, year_period(day)), _with_part(fields, f"months.{day.month:02d}")
        )

    def add_monthly(
        self, view: str, cuboid: Cuboid, values: tuple[str | None, ...], moment: datetime, fields: Fields
    ) -> None:
        """``fields`` in ``moment``'s month and in all time (views read by whole months)."""
        self.add_total(CounterKey(view, cuboid, values, month_period(utc_day(moment))), fields)
        self.add_total(CounterKey(view, cuboid, values, ALL), fields)

    def name(self, key: CounterKey, field_name: str, tag: str) -> None:
        held = self.names.setdefault(key, {})
        if tag > held.get(field_name, ""):
            held[field_name] = tag

    def merge(self, other: Tally, sign: int = 1) -> Tally:
        for key, fields in other.counts.items():
            self.add(key, fields, sign)
        for key, names in other.names.items():
            for field_name, tag in names.items():
                self.name(key, field_name, tag)
        return self

    def add_change(self, new: Tally, old: Tally) -> Tally:
        """Add ``new - old`` without building the difference first (the same sums: a batch's
        changed facts are tallied into one total, and the copy was a third of the time)."""
        self.merge(new)
        for key, fields in old.counts.items():
            self.add(key, fields, -1)
        return self

    def __sub__(self, other: Tally) -> Tally:
        """What changes from ``other`` to ``self``. Names only ever grow (newest wins), so
        the difference keeps ``self``'s."""
        difference = Tally().merge(self).merge(other, sign=-1)
        difference.names = {key: dict(names) for key, names in self.names.items()}
        return difference

    def __bool__(self) -> bool:
        return bool(self.counts or self.names)


def _with_part(fields: Fields, part: str) -> Fields:
    """Totals (``t.<field>``) and the day's or month's share (``days.05.<field>``)."""
    return {
        **{f"{TOTALS}.{name}": value for name, value in fields.items()},
        **{f"{part}.{name}": value for name, value in fields.items()},
    }


def _values(source: Mapping[str, str | None], cuboid: Cuboid) -> tuple[str | None, ...]:
    return tuple(source[d] for d in cuboid)


def _value_sets(
    source: Mapping[str, str | None], products: tuple[str, ...], cuboid: Cuboid
) -> list[tuple[str | None, ...]]:
    """The cuboid's values for an opportunity: one set per product when the cuboid has the
    product dimension (none: one set with no product)."""
    if "product_id" not in cuboid:
        return [_values(source, cuboid)]
    choices: tuple[str | None, ...] = tuple(sorted(set(products))) or (None,)
    return [_values({**source, "product_id": product}, cuboid) for product in choices]


def _sales(opp: OpportunityFacts) -> dict[str, str | None]:
    return {
        "owner_id": opp.owner_id,
        "sales_team_id": opp.sales_team_id,
        "sales_region": opp.sales_region,
        "account_industry": opp.account_industry,
        "pipeline_id": opp.pipeline_id,
    }


# -- leads ------------------------------------------------------------------------------------
def lead_tally(lead: LeadFacts | None) -> Tally:
    """The lead's counts: each funnel step it reached, on the day it reached it (activity,
    ``a.<step>``) and on the day it was captured (cohort, ``c.<step>``), per funnel cuboid;
    and, if it came from a campaign, one lead (converted or not) of that campaign."""
    tally = Tally()
    if lead is None or value_of(lead.status) == MERGED:
        return tally  # a lead merged into another one counts as that one
    dimensions = {d: value_of(getattr(lead, d)) for d in FUNNEL_DIMENSIONS}
    steps = lead.funnel
    dated: list[tuple[datetime, Fields]] = []
    for step in FUNNEL_STEPS:
        moment = getattr(steps, step)
        if moment is not None:
            dated.append((moment, {f"a.{step}": 1}))
    if steps.captured is not None:
        reached: Fields = {f"c.{step}": 1 for step in FUNNEL_STEPS if getattr(steps, step) is not None}
        dated.append((steps.captured, reached))
    for cuboid in FUNNEL_CUBOIDS:
        values = _values(dimensions, cuboid)
        for moment, fields in dated:
            tally.add_dated(FUNNEL, cuboid, values, moment, fields)
    if lead.campaign_id is not None:
        fields = {"leads": 1, "converted_leads": int(lead.converted_at is not None)}
        tally.add_total(CounterKey(CAMPAIGNS, CAMPAIGN_CUBOID, (lead.campaign_id,), ALL), fields)
    return tally


# -- opportunities ----------------------------------------------------------------------------
def opportunity_tally(opportunity: OpportunityFacts | None) -> Tally:
    tally = Tally()
    if opportunity is None:
        return tally
    _pipeline_and_forecast(tally, opportunity)
    _win_loss(tally, opportunity)
    _campaign_outcome(tally, opportunity)
    _history(tally, opportunity)
    _velocity(tally, opportunity)
    _stage_names(tally, opportunity.revisions)
    return tally


def _pipeline_and_forecast(tally: Tally, opp: OpportunityFacts) -> None:
    if (
        opp.pipeline_id is None
        or opp.stage_id is None
        or opp.currency is None
        or opp.amount is None
        or opp.weighted_amount is None
    ):
        return  # known only from lead.converted so far
    dimensions: dict[str, str | None] = {
        **_sales(opp),
        "stage_id": opp.stage_id,
        "currency": opp.currency,
        "forecast_category": value_of(opp.forecast_category),
    }
    money: Fields = {
        "count": 1,
        "amount": cents(opp.amount),
        "weighted_amount": ten_thousandths(opp.weighted_amount),
    }
    if opp.is_open:
        # Ages are read against the clock: keep the sum of creation times of those that have one.
        aged: Fields = {"aged": 1, "created_ms": millis(opp.created_at)} if opp.created_at else {}
        fields = {**money, **aged}
        for cuboid in PIPELINE_CUBOIDS:
            for values in _value_sets(dimensions, opp.product_ids, cuboid):
                tally.add_total(CounterKey(PIPELINE, cuboid, values, ALL), fields)
    # The forecast: what is still open by the month it is expected to close, and what was won
    # by the month it closed. Lost business forecasts nothing.
    if opp.is_open or opp.stage_kind == StageKind.CLOSED_WON:
        close = utc_day(opp.won_at) if opp.won_at else opp.expected_close_date
        dimensions["close_month"] = month_period(close) if close else None
        for cuboid in FORECAST_CUBOIDS:
            for values in _value_sets(dimensions, opp.product_ids, cuboid):
                tally.add_total(CounterKey(FORECAST, cuboid, values, ALL), money)


def _win_loss(tally: Tally, opp: OpportunityFacts) -> None:
    """Opportunities created (on their creation day) and closed (on their closing day): won,
    lost, won amounts per currency and the sales cycle (created to closed)."""
    lost = opp.stage_kind == StageKind.CLOSED_LOST
    dimensions = {
        **_sales(opp),
        "loss_reason": opp.loss_reason if lost else None,
        "lead_source": value_of(opp.attributed_lead_source),
        "campaign_id": opp.attributed_campaign_id,
    }
    dated: list[tuple[datetime, Fields]] = []
    if opp.created_at is not None:
        dated.append((opp.created_at, {"created": 1}))
    if opp.is_closed and opp.closed_at is not None and opp.amount is not None and opp.currency:
        closed: Fields = {"lost": 1} if lost else {"won": 1, f"won_count.{opp.currency}": 1}
        if not lost:
            closed[f"won_amount.{opp.currency}"] = cents(opp.amount)
        if opp.created_at is not None:
            cycle = max(millis(opp.closed_at) - millis(opp.created_at), 0)
            outcome = "lost" if lost else "won"
            closed.update({f"{outcome}_cycles": 1, f"{outcome}_cycle_ms": cycle})
        dated.append((opp.closed_at, closed))
    for cuboid in WIN_LOSS_CUBOIDS:
        for values in _value_sets(dimensions, opp.product_ids, cuboid):
            for moment, fields in dated:
                tally.add_dated(WIN_LOSS, cuboid, values, moment, fields)


def _campaign_outcome(tally: Tally, opp: OpportunityFacts) -> None:
    campaign = opp.attributed_campaign_id
    if campaign is None or opp.stage_kind is None:
        return
    fields: Fields = {"opportunities": 1}
    if opp.stage_kind == StageKind.CLOSED_WON and opp.currency and opp.amount is not None:
        fields.update({"won_opportunities": 1, f"won_amount.{opp.currency}": cents(opp.amount)})
    elif opp.stage_kind == StageKind.CLOSED_LOST:
        fields["lost_opportunities"] = 1
    tally.add_total(CounterKey(CAMPAIGNS, CAMPAIGN_CUBOID, (campaign,), ALL), fields)


def _open_cell(revision: Revision | None) -> tuple[tuple[str, str, str], Fields] | None:
    if revision is None or not revision.is_open:
        return None
    fields: Fields = {
        "count": 1,
        "amount": cents(revision.amount),
        "weighted_amount": ten_thousandths(revision.weighted_amount),
    }
    return (revision.pipeline_id, revision.stage_id, revision.currency), fields


def _history(tally: Tally, opp: OpportunityFacts) -> None:
    """Where the opportunity stood in the open pipeline at the end of each day, as dated
    differences: the pipeline at the end of day D is the sum of all differences up to D."""
    held: tuple[tuple[str, str, str], Fields] | None = None
    for day in sorted({utc_day(revision.at) for revision in opp.revisions}):
        cell = _open_cell(opp.state_at(day_start(day + timedelta(days=1))))
        if cell == held:
            continue
        moment = day_start(day)
        if held is not None:
            tally.add_dated(HISTORY, HISTORY_CUBOID, held[0], moment, {k: -v for k, v in held[1].items()})
        if cell is not None:
            tally.add_dated(HISTORY, HISTORY_CUBOID, cell[0], moment, cell[1])
        held = cell


def _velocity(tally: Tally, opp: OpportunityFacts) -> None:
    """Each stay in an open stage: entered (in the month it began); once left, its duration
    (sum, per-day histogram, per-minute histogram of that day) and the move to the next stage,
    in the month it ended."""
    for stay in opp.stays():
        if stay.stage_kind != StageKind.OPEN:
            continue
        stage = (stay.pipeline_id, stay.stage_id)
        tally.add_monthly(VELOCITY, STAGE_CUBOID, stage, stay.entered_at, {"entered": 1})
        duration = stay.duration
        if duration is None or stay.left_at is None:
            continue
        ms = duration // timedelta(milliseconds=1)
        days, minute = divmod(ms, DAY_MS)
        fields: Fields = {"stays": 1, "duration_ms": ms, f"hist.{days}": 1}
        tally.add_monthly(VELOCITY, STAGE_CUBOID, stage, stay.left_at, fields)
        tally.add_monthly(
            VELOCITY,
            DURATION_CUBOID,
            (*stage, str(days)),
            stay.left_at,
            {f"minutes.{minute // MINUTE_MS}": 1},
        )
        tally.add_monthly(VELOCITY, MOVE_CUBOID, (*stage, stay.moved_to), stay.left_at, {"moves": 1})


def _stage_names(tally: Tally, revisions: Iterable[Revision]) -> None:
    for revision in revisions:
        key = CounterKey(STAGES, STAGE_CUBOID, (revision.pipeline_id, revision.stage_id), ALL)
        tally.name(key, f"{TOTALS}.name", name_tag(revision.at, revision.stage_name))
        if revision.stage_order is not None:
            tally.name(key, f"{TOTALS}.order", name_tag(revision.at, str(revision.stage_order)))
        if revision.previous_stage_id and revision.previous_stage_name:
            previous = CounterKey(
                STAGES, STAGE_CUBOID, (revision.pipeline_id, revision.previous_stage_id), ALL
            )
            tally.name(previous, f"{TOTALS}.name", name_tag(revision.at, revision.previous_stage_name))


def pipeline_tally(pipeline: PipelineDefined) -> Tally:
    """A pipeline's definition names and orders its stages (newest definition wins, as with
    the names opportunities carry), so views name a stage no opportunity has reached yet and
    show a renamed one under its new name."""
    tally = Tally()
    for stage in pipeline.stages:
        key = CounterKey(STAGES, STAGE_CUBOID, (pipeline.pipeline_id, stage.stage_id), ALL)
        tally.name(key, f"{TOTALS}.name", name_tag(pipeline.defined_at, stage.name))
        tally.name(key, f"{TOTALS}.order", name_tag(pipeline.defined_at, str(stage.position)))
    return tally


def picklist_tally(picklist: PicklistRevised) -> Tally:
    """A picklist's revision labels its values (newest revision wins), so a view shows an
    organisation-defined value under its label and a relabelled one under its new label."""
    tally = Tally()
    for entry in picklist.values:
        key = CounterKey(LABELS, LABEL_CUBOID, (picklist.picklist.value, entry.value), ALL)
        tally.name(key, f"{TOTALS}.label", name_tag(picklist.revised_at, entry.label))
    return tally


# -- members ----------------------------------------------------------------------------------
def member_tally(campaign_id: str) -> Tally:
    """One new member of a campaign (memberships are a set: only a first sighting counts)."""
    tally = Tally()
    tally.add_total(CounterKey(CAMPAIGNS, CAMPAIGN_CUBOID, (campaign_id,), ALL), {"members": 1})
    return tally


# -- documents --------------------------------------------------------------------------------
def nest(fields: Mapping[str, object]) -> dict[str, object]:
    """Dotted paths to the nested document MongoDB builds from them."""
    document: dict[str, object] = {}
    for path, value in fields.items():
        node = document
        *parents, leaf = path.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            assert isinstance(child, dict)
            node = child
        node[leaf] = value
    return document


def flatten(document: Mapping[str, object], prefix: str = "") -> Fields:
    """A nested counter (sub)document as dotted paths to numbers, each field's high part
    (``HIGH``) added in."""
    fields: Fields = {}
    high: list[tuple[str, Number]] = []
    for name, value in document.items():
        if isinstance(value, Mapping):
            fields.update(flatten(value, f"{prefix}{name}."))
        elif isinstance(value, int | Decimal) and not isinstance(value, bool):
            if "~" in name:  # cheaper than endswith on every field of a read (1,200 of them)
                high.append((name, value))
            else:
                fields[prefix + name] = value
    for name, value in high:
        path = prefix + name.removesuffix(HIGH)
        fields[path] = fields.get(path, 0) + value * HIGH_BASE
    return fields


def joined(document: Mapping[str, Any]) -> dict[str, Any]:
    """A stored (nested) counter document with each field's high part added in."""
    result: dict[str, Any] = {}
    for name, value in document.items():
        if isinstance(value, Mapping):
            result[name] = joined(value)
        elif isinstance(value, int | Decimal) and not isinstance(value, bool):
            if name.endswith(HIGH):
                name, value = name[: -len(HIGH)], value * HIGH_BASE
            result[name] = result.get(name, 0) + value
        else:
            result[name] = value
    return result


# -- changes ----------------------------------------------------------------------------------
@dataclass
class Changes:
    """Facts changed within one transaction, each with the version it started from, so that
    the counters change by exactly ``tally(final) - tally(original)``."""

    leads: dict[str, tuple[LeadFacts | None, LeadFacts]] = field(default_factory=dict)
    opportunities: dict[str, tuple[OpportunityFacts | None, OpportunityFacts]] = field(default_factory=dict)
    campaigns: dict[str, tuple[CampaignFacts | None, CampaignFacts]] = field(default_factory=dict)
    new_members: list[tuple[str, datetime]] = field(default_factory=list)
    pipelines: list[PipelineDefined] = field(default_factory=list)
    picklists: list[PicklistRevised] = field(default_factory=list)

    def lead(self, original: LeadFacts | None, current: LeadFacts) -> None:
        held = self.leads.get(current.lead_id)
        self.leads[current.lead_id] = (held[0] if held else original, current)

    def opportunity(self, original: OpportunityFacts | None, current: OpportunityFacts) -> None:
        held = self.opportunities.get(current.opportunity_id)
        self.opportunities[current.opportunity_id] = (held[0] if held else original, current)

    def campaign(self, original: CampaignFacts | None, current: CampaignFacts) -> None:
        held = self.campaigns.get(current.campaign_id)
        self.campaigns[current.campaign_id] = (held[0] if held else original, current)

    def tally(self) -> Tally:
        total = Tally()
        for old_lead, new_lead in self.leads.values():
            total.add_change(lead_tally(new_lead), lead_tally(old_lead))
        for old_opp, new_opp in self.opportunities.values():
            total.add_change(opportunity_tally(new_opp), opportunity_tally(old_opp))
        for campaign_id, _ in self.new_members:
            total.merge(member_tally(campaign_id))
        for pipeline in self.pipelines:
            total.merge(pipeline_tally(pipeline))
        for picklist in self.picklists:
            total.merge(picklist_tally(picklist))
        return total

    def as_of(self) -> dict[str, datetime]:
        """Per kind of fact, the newest event time among the changed facts."""
        newest: dict[str, datetime] = {}
        for kind, changed in (
            ("leads", [c.as_of for _, c in self.leads.values()]),
            ("opportunities", [c.as_of for _, c in self.opportunities.values()]),
            ("campaigns", [c.as_of for _, c in self.campaigns.values()] + [at for _, at in self.new_members]),
        ):
            known = [moment for moment in changed if moment is not None]
            if known:
                newest[kind] = max(known)
        return newest

    def __bool__(self) -> bool:
        return bool(
            self.leads
            or self.opportunities
            or self.campaigns
            or self.new_members
            or self.pipelines
            or self.picklists
        )
