"""Unit tests of the opportunity import's rows and chunk logic, without a database: the CSV
encodings of line items and history, an optional account, names matched to the catalogue
(case, accents, blanks) or refused with the closest known ones, a closed deal replayed
through the events a live one emits, a re-import that changes nothing, and a chunk's writes
gathered per collection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from crm_contracts.events.common import Actor
from crm_contracts.events.opportunities import OpportunityClosed
from crm_contracts.events.picklists import PicklistName, UnknownValues
from crm_opportunities.domain import (
    DEFAULT_LOSS_REASONS,
    Account,
    IllegalTransition,
    Opportunity,
    Product,
    SalesTeam,
    build_case,
    default_pipeline,
)
from crm_opportunities.imports import imported_id
from crm_opportunities.names import Names, UnknownName, name_key
from crm_opportunities.opportunity_import import (
    ChunkRecords,
    ChunkWrites,
    RowRefused,
    apply_again,
    apply_new,
    check_columns,
    figures_in,
    resolve,
)
from crm_opportunities.opportunity_rows import OpportunityRow
from crm_opportunities.use_cases import Policy
from crm_runtime.picklists import Picklist
from crm_runtime.uploads import UnreadableUpload
from pydantic import ValidationError

T0 = datetime(2025, 1, 10, 9, 0, tzinfo=UTC)
SYSTEM = "old-crm"
BY = Actor(id=f"import:{SYSTEM}")
POLICY = Policy(company_currency="EUR")
LOSS_REASONS = Picklist.default(PicklistName.LOSS_REASON)


def at(days: float) -> datetime:
    return T0 + timedelta(days=days)


def product(product_id: str, name: str, price: str, currency: str = "EUR") -> Product:
    return Product(
        id=product_id, name=name, list_price=Decimal(price), currency=currency, created_at=T0, updated_at=T0
    )


def account(external_id: str = "A-1") -> Account:
    return Account(
        id=imported_id("account", SYSTEM, external_id),
        name="Analytical Engines",
        industry="Machinery",
        created_at=T0,
        updated_at=T0,
    )


def records(
    *opportunities: Opportunity,
    accounts: tuple[Account, ...] = (),
    loss_reasons: Picklist = LOSS_REASONS,
) -> ChunkRecords:
    pipeline = default_pipeline(T0)
    products = [
        product("widget", "Wïdget Pro", "19.90"),
        product("setup", "Setup fee", "500"),
        product("dollar-box", "Dollar box", "5", currency="USD"),
    ]
    teams = [SalesTeam(id="team-n", name="Équipe Nord", region="North", created_at=T0, updated_at=T0)]
    return ChunkRecords(
        opportunities={o.id: o for o in opportunities},
        accounts={a.id: a for a in accounts},
        pipelines=Names("pipeline", [(pipeline, (pipeline.id, pipeline.name))]),
        pipelines_by_id={pipeline.id: pipeline},
        products=Names("product", [(p, (p.id, p.name)) for p in products]),
        teams=Names("sales team", [(t, (t.id, t.name)) for t in teams]),
        teams_by_id={t.id: t for t in teams},
        loss_reasons=loss_reasons,
    )


def row(**fields: Any) -> OpportunityRow:
    return OpportunityRow.model_validate({"external_id": "O-1", "name": "Engines 2025", **fields})


WON_WITH_HISTORY: dict[str, Any] = {
    "account_external_id": "A-1",
    "owner_id": "rep-7",
    "sales_team_id": "equipe nord",
    "stage_history": [
        {"stage_id": "prospecting", "entered_at": "2025-01-10T09:00:00Z"},
        {"stage_id": "Proposal", "entered_at": "2025-02-01T09:00:00Z"},
        {"stage_id": "closed_won", "entered_at": "2025-03-01T17:00:00Z"},
    ],
    "line_items": [{"product": "widget pro", "quantity": 3}, {"product": "Setup fee", "unit_price": "450"}],
    "expected_close_date": "2025-03-31",
}


# -- rows -------------------------------------------------------------------------------------
def test_a_csv_line_items_cell_gives_product_quantity_and_price_each_optional() -> None:
    parsed = row(line_items="Widget Pro*3@19.90 | Setup fee | Box @ home*2")
    assert [(i.product, i.quantity, i.unit_price) for i in parsed.line_items or ()] == [
        ("Widget Pro", Decimal("3"), Decimal("19.90")),
        ("Setup fee", Decimal("1"), None),
        ("Box @ home", Decimal("2"), None),
    ]
    with pytest.raises(ValidationError) as err:
        row(line_items="Widget*0")
    assert err.value.errors()[0]["loc"] == ("line_items", 0, "quantity")


def test_a_row_may_name_no_account_or_one_but_not_two() -> None:
    assert row().account_external_id is None and row().account_id is None
    with pytest.raises(ValidationError):
        row(account_external_id="A-1", account_id="acc-1")


def test_an_unknown_csv_column_is_refused_with_the_closest_known_one() -> None:
    check_columns(["external_id", "name", "line_items", "stage_history", "sales_team_id", "status"])
    with pytest.raises(UnreadableUpload) as err:
        check_columns(["external_id", "name", "line_itmes"])
    assert err.value.field == "line_itmes" and "did you mean 'line_items'" in str(err.value)


# -- names ------------------------------------------------------------------------------------
def test_names_match_across_case_accents_and_blanks_but_not_other_spellings() -> None:
    assert name_key("  Wïdget   PRO ") == name_key("widget pro") == "widget pro"
    names = Names("product", [("widget", ("widget", "Wïdget Pro"))])
    assert names.resolve("WIDGET  pro") == "widget" and names.resolve("widget") == "widget"
    with pytest.raises(UnknownName) as err:
        names.resolve("Widgets Pro")
    assert str(err.value) == "unknown product 'Widgets Pro'; did you mean 'Wïdget Pro' or 'widget'?"
    twins = Names("sales team", [("t1", ("t1", "North")), ("t2", ("t2", "north"))])
    with pytest.raises(UnknownName, match="matches several"):
        twins.resolve("NORTH")


@pytest.mark.parametrize(
    ("fields", "column", "value", "meant"),
    [
        ({"line_items": [{"product": "Widgte Pro"}]}, "line_items.0.product", "Widgte Pro", "Wïdget Pro"),
        ({"stage_id": "negotiaton"}, "stage_id", "negotiaton", "negotiation"),
        (
            {"stage_history": [{"stage_id": "prospectin", "entered_at": "2025-01-10T09:00:00Z"}]},
            "stage_history.0.stage_id",
            "prospectin",
            "prospecting",
        ),
        ({"sales_team_id": "Equipe Nrod"}, "sales_team_id", "Equipe Nrod", "Équipe Nord"),
        ({"stage_id": "closed_lost", "loss_reason": "competiton"}, "loss_reason", "competiton", "competitor"),
        ({"pipeline_id": "defualt"}, "pipeline_id", "defualt", "default"),
    ],
)
def test_a_name_that_means_nothing_here_is_refused_with_the_closest_known_ones(
    fields: dict[str, Any], column: str, value: str, meant: str
) -> None:
    with pytest.raises(RowRefused) as err:
        resolve(row(**fields), 1, records(), SYSTEM, POLICY)
    assert (err.value.column, err.value.value) == (column, value)
    assert err.value.reason.endswith(f"did you mean '{meant}'?") or f"'{meant}'" in err.value.reason


def test_an_unknown_account_or_a_product_in_another_currency_is_refused_naming_the_column() -> None:
    with pytest.raises(RowRefused) as err:
        resolve(row(account_external_id="A-404"), 1, records(), SYSTEM, POLICY)
    assert (err.value.column, err.value.value) == ("account_external_id", "A-404")
    with pytest.raises(RowRefused) as err:
        resolve(row(line_items=[{"product": "dollar box"}]), 1, records(), SYSTEM, POLICY)
    assert err.value.column == "line_items.0.product" and "priced in USD" in err.value.reason


def test_status_won_or_lost_without_a_stage_means_the_pipelines_closed_stage() -> None:
    assert resolve(row(status="Won"), 1, records(), SYSTEM, POLICY).stage_id == "closed_won"
    lost = resolve(row(status="lost", loss_reason="PRICE"), 1, records(), SYSTEM, POLICY)
    assert (lost.stage_id, lost.loss_reason) == ("closed_lost", "price")
    with pytest.raises(RowRefused) as err:
        resolve(row(status="won", stage_id="proposal"), 1, records(), SYSTEM, POLICY)
    assert err.value.column == "status"


# -- a new row --------------------------------------------------------------------------------
def test_a_closed_won_row_replays_creation_line_items_and_each_move_at_its_own_time() -> None:
    held = records(accounts=(account(),))
    resolved = resolve(row(**WON_WITH_HISTORY), 1, held, SYSTEM, POLICY)
    applied = apply_new(resolved, figures_in(held), POLICY, BY)
    won = applied.opportunity
    assert won is not None
    # No amount given: the line items' total, as a rep's PUT of line items sets it.
    assert won.amount == Decimal("3") * Decimal("19.90") + Decimal("450")
    assert (won.status.value, won.version, won.closed_at, won.sales_team_id) == (
        "won",
        4,
        at(50) + timedelta(hours=8),
        "team-n",
    )
    events = [(spec.topic, event.time, event.sequence) for spec, event in applied.emissions]
    assert events == [
        ("opportunity.created", T0, "1"),
        ("opportunity.updated", T0, "2"),
        ("opportunity.stage_changed", at(22), "3"),
        ("opportunity.stage_changed", at(50) + timedelta(hours=8), "4"),
        ("opportunity.closed", at(50) + timedelta(hours=8), "4"),
    ]
    created, updated, _, closing, closed = (event.data for _, event in applied.emissions)
    assert created.opportunity.product_ids == [] and created.opportunity.amount == Decimal("0")
    assert updated.changed_fields == ["amount", "line_items"]
    assert closing.opportunity.product_ids == ["widget", "setup"]
    assert (closed.won, closed.amount, closed.opportunity.sales_region) == (True, won.amount, "North")
    assert closed.opportunity.account_industry == "Machinery"
    assert (applied.team_deltas, applied.won_at) == ({"team-n": 1}, won.closed_at)


def test_a_deal_with_no_account_is_imported_and_its_case_and_figures_have_none() -> None:
    held = records()
    applied = apply_new(
        resolve(row(status="won", created_at="2025-01-10T09:00:00Z"), 1, held, SYSTEM, POLICY),
        figures_in(held),
        POLICY,
        BY,
    )
    assert applied.opportunity is not None and applied.opportunity.account_id is None
    assert all(event.data.opportunity.account_id is None for _, event in applied.emissions)
    assert build_case(applied.opportunity, None, []).account is None
    writes = ChunkWrites()
    writes.add(applied, None, BY)
    assert [spec.topic for spec, _ in writes.emissions] == [
        "opportunity.created",
        "opportunity.stage_changed",
        "opportunity.closed",
    ]


def test_the_won_deals_of_a_chunk_turn_their_prospect_account_into_a_customer_once() -> None:
    customer_to_be = account()
    held = records(accounts=(customer_to_be,))
    writes = ChunkWrites()
    for number, external_id in enumerate(("O-1", "O-2"), start=1):
        fields = WON_WITH_HISTORY | {"external_id": external_id}
        resolved = resolve(
            OpportunityRow.model_validate({"name": "n", **fields}), number, held, SYSTEM, POLICY
        )
        writes.add(apply_new(resolved, figures_in(held), POLICY, BY), customer_to_be, BY)
    assert [o.id for o in writes.new] == [imported_id("opportunity", SYSTEM, e) for e in ("O-1", "O-2")]
    assert [spec.topic for spec, _ in writes.emissions].count("account.updated") == 1
    assert (
        writes.accounts == {customer_to_be.id: (customer_to_be, 1)}
        and customer_to_be.type.value == "customer"
    )
    assert writes.team_deltas == {"team-n": 2}


# -- the same row again -----------------------------------------------------------------------
def imported_before(fields: dict[str, Any]) -> tuple[Opportunity, ChunkRecords]:
    first = records(accounts=(account(),))
    applied = apply_new(resolve(row(**fields), 1, first, SYSTEM, POLICY), figures_in(first), POLICY, BY)
    assert applied.opportunity is not None
    return applied.opportunity, records(applied.opportunity, accounts=(account(),))


def test_a_closed_deal_imported_again_as_it_was_is_left_alone_and_changed_it_is_refused() -> None:
    existing, held = imported_before(WON_WITH_HISTORY)
    same = apply_again(
        resolve(row(**WON_WITH_HISTORY), 1, held, SYSTEM, POLICY),
        existing,
        held,
        figures_in(held),
        POLICY,
        BY,
    )
    assert same.opportunity is None and same.emissions == []
    more_widgets = WON_WITH_HISTORY | {"line_items": [{"product": "widget", "quantity": 4}]}
    with pytest.raises(IllegalTransition, match="reopen it before importing changes"):
        apply_again(
            resolve(row(**more_widgets), 1, held, SYSTEM, POLICY),
            existing,
            held,
            figures_in(held),
            POLICY,
            BY,
        )


def test_an_open_deal_imported_again_gets_its_new_figures_line_items_and_stage() -> None:
    first = {
        "account_external_id": "A-1",
        "stage_id": "qualification",
        "amount": "900",
        "created_at": "2025-06-01T09:00:00Z",
    }
    existing, held = imported_before(first)
    unchanged = apply_again(
        resolve(row(**first), 1, held, SYSTEM, POLICY), existing, held, figures_in(held), POLICY, BY
    )
    assert unchanged.opportunity is None
    moved = first | {
        "stage_id": "proposal",
        "amount": "950",
        "sales_team_id": "team-n",
        "line_items": "setup",
    }
    applied = apply_again(
        resolve(row(**moved), 1, held, SYSTEM, POLICY), existing, held, figures_in(held), POLICY, BY
    )
    assert applied.opportunity is not None and applied.read_version == existing.version == 1
    assert [
        (spec.topic, getattr(event.data, "changed_fields", None)) for spec, event in applied.emissions
    ] == [
        ("opportunity.updated", ["amount", "sales_team_id"]),
        ("opportunity.updated", ["line_items"]),  # the amount was given: it stays 950
        ("opportunity.stage_changed", None),
    ]
    assert (applied.opportunity.amount, applied.opportunity.stage_id) == (Decimal("950.00"), "proposal")
    assert (
        applied.team_deltas == {"team-n": 1} and existing.stage_id == "qualification"
    )  # read copy untouched


def test_a_loss_reason_is_folded_by_the_organisations_picklist_aliases_included() -> None:
    assert "no_budget" in DEFAULT_LOSS_REASONS
    lost = resolve(row(stage_id="closed_lost", loss_reason="No Budget"), 1, records(), SYSTEM, POLICY)
    assert lost.loss_reason == "no_budget"
    defaults = Picklist.default(PicklistName.LOSS_REASON)
    revised = defaults.revised(
        [
            v.model_copy(update={"aliases": ["Too expensive"]}) if v.value == "price" else v
            for v in defaults.values
        ],
        blank_value=None,
        unknown_values=UnknownValues.REJECT,
        now=T0,
        by="admin-1",
    )
    aliased = resolve(
        row(stage_id="closed_lost", loss_reason="too-expensive"),
        1,
        records(loss_reasons=revised),
        SYSTEM,
        POLICY,
    )
    assert aliased.loss_reason == "price"
    with pytest.raises(RowRefused) as err:
        resolve(row(stage_id="closed_lost", loss_reason="Budjet"), 1, records(), SYSTEM, POLICY)
    assert (err.value.column, err.value.value) == ("loss_reason", "Budjet")
    assert (
        err.value.reason
        == "'Budjet' is not a value of the loss_reason picklist; did you mean 'no_budget' or 'No budget'?"
    )


def test_a_lost_row_keeps_its_loss_note_and_competitor_in_the_closed_event() -> None:
    resolved = resolve(
        row(
            stage_id="closed_lost",
            loss_reason="price",
            loss_note="Went with a cheaper bid",
            competitor="Rival AG",
        ),
        1,
        records(),
        SYSTEM,
        POLICY,
    )
    applied = apply_new(resolved, figures_in(records()), POLICY, BY)
    closed = [event.data for _, event in applied.emissions if isinstance(event.data, OpportunityClosed)]
    assert [(c.loss_reason, c.loss_note, c.competitor) for c in closed] == [
        ("price", "Went with a cheaper bid", "Rival AG")
    ]
