"""Unit tests of the opportunity's rules: pipelines and their stages, probabilities, stage
moves forward and back, closing won or lost, reopening, figure changes and the case."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from crm_contracts.events.common import MONEY_MAX, Actor
from crm_contracts.events.opportunities import ForecastCategory, StageKind
from crm_opportunities.domain import (
    DEFAULT_LOSS_REASONS,
    Account,
    ContactRole,
    HistoricalStage,
    IllegalTransition,
    InvalidRequest,
    LineItem,
    Opportunity,
    OpportunityChanges,
    OpportunityStatus,
    Pipeline,
    Product,
    SalesTeam,
    Stage,
    build_case,
    check_stages,
    default_pipeline,
    normalise_domain,
)
from crm_opportunities.imports import AccountRow, imported_id
from crm_opportunities.opportunity_rows import OpportunityRow
from crm_runtime.uploads import problems_of
from pydantic import ValidationError

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
REP = Actor(id="rep-1", name="Rita Rep")
MANAGER = Actor(id="mgr-1")


def at(hours: int) -> datetime:
    return T0 + timedelta(hours=hours)


def pipeline() -> Pipeline:
    return default_pipeline(T0)


def opportunity(**overrides: object) -> Opportunity:
    args: dict[str, object] = {
        "opportunity_id": "opp-1",
        "name": "Engines rollout",
        "account_id": "acc-1",
        "pipeline": pipeline(),
        "by": REP,
        "now": T0,
        "amount": Decimal("12500.00"),
        "currency": "EUR",
    }
    args.update(overrides)
    return Opportunity.open(**args)  # type: ignore[arg-type]


# -- pipelines --------------------------------------------------------------------------------
def test_the_default_pipeline_has_the_stages_crm_users_know() -> None:
    stages = [(s.id, s.name, s.kind, s.probability, s.forecast_category) for s in pipeline().stages]
    assert stages == [
        ("prospecting", "Prospecting", StageKind.OPEN, 10, ForecastCategory.PIPELINE),
        ("qualification", "Qualification", StageKind.OPEN, 20, ForecastCategory.PIPELINE),
        ("proposal", "Proposal", StageKind.OPEN, 50, ForecastCategory.BEST_CASE),
        ("negotiation", "Negotiation", StageKind.OPEN, 80, ForecastCategory.COMMIT),
        ("closed_won", "Closed Won", StageKind.CLOSED_WON, 100, ForecastCategory.CLOSED),
        ("closed_lost", "Closed Lost", StageKind.CLOSED_LOST, 0, ForecastCategory.OMITTED),
    ]
    assert pipeline().id == "default" and pipeline().loss_reasons is None


def stage(stage_id: str, kind: StageKind = StageKind.OPEN, probability: int = 30, **extra: object) -> Stage:
    forecast = {
        StageKind.OPEN: ForecastCategory.PIPELINE,
        StageKind.CLOSED_WON: ForecastCategory.CLOSED,
        StageKind.CLOSED_LOST: ForecastCategory.OMITTED,
    }[kind]
    data: dict[str, object] = {
        "id": stage_id,
        "name": stage_id.title(),
        "kind": kind,
        "probability": probability,
        "forecast_category": forecast,
    }
    data.update(extra)
    return Stage.model_validate(data)


WON = stage("won", StageKind.CLOSED_WON, 100)
LOST = stage("lost", StageKind.CLOSED_LOST, 0)


@pytest.mark.parametrize(
    ("stages", "problem"),
    [
        ([stage("a"), stage("a"), WON, LOST], "appears more than once"),
        ([WON, stage("a"), LOST], "first stage must be open"),
        ([stage("a"), stage("b"), LOST], "at least one closed_won"),
        ([stage("a"), stage("b"), WON], "at least one closed_lost"),
        ([stage("a"), stage("won", StageKind.CLOSED_WON, 90), LOST], "probability 100"),
        ([stage("a"), WON, stage("lost", StageKind.CLOSED_LOST, 5)], "probability 0"),
        ([stage("a", forecast_category="closed"), WON, LOST], "cannot have forecast category closed"),
    ],
)
def test_a_pipeline_that_cannot_work_is_refused(stages: list[Stage], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_stages(stages)


def test_a_custom_pipeline_with_its_own_stages_and_loss_reasons_is_accepted() -> None:
    custom = Pipeline(
        id="renewals",
        name="Renewals",
        stages=[stage("notice", probability=40), stage("quote", probability=70), WON, LOST],
        loss_reasons=["churned", "downgraded"],
        created_at=T0,
    )
    assert custom.first_stage.id == "notice"
    assert custom.allowed_loss_reasons(DEFAULT_LOSS_REASONS) == ["churned", "downgraded"]
    assert pipeline().allowed_loss_reasons(("x",)) == ("x",)


# -- opening ----------------------------------------------------------------------------------
def test_a_new_opportunity_starts_in_the_first_stage_with_its_probability() -> None:
    opp = opportunity()
    assert (opp.stage_id, opp.probability, opp.forecast_category) == (
        "prospecting",
        10,
        ForecastCategory.PIPELINE,
    )
    assert opp.status is OpportunityStatus.OPEN and opp.version == 1
    assert not opp.probability_overridden
    assert [v.stage_id for v in opp.stage_history] == ["prospecting"]
    assert opp.stage_history[0].entered_at == T0 and opp.stage_history[0].left_at is None


def test_an_opportunity_can_open_in_a_later_stage_with_its_own_probability() -> None:
    opp = opportunity(stage_id="proposal", probability=65)
    assert (opp.stage_id, opp.probability, opp.probability_overridden) == ("proposal", 65, True)
    assert opp.forecast_category is ForecastCategory.BEST_CASE


def test_an_opportunity_cannot_open_closed_or_in_an_unknown_stage() -> None:
    with pytest.raises(InvalidRequest) as closed:
        opportunity(stage_id="closed_won")
    assert closed.value.field == "stage_id"
    with pytest.raises(InvalidRequest, match="not a stage of pipeline"):
        opportunity(stage_id="nowhere")


def test_weighted_amount_is_amount_times_probability() -> None:
    assert opportunity().weighted_amount == Decimal("1250.00")
    assert opportunity(stage_id="negotiation", amount=Decimal("999.99")).weighted_amount == Decimal("799.99")


# -- stage moves ------------------------------------------------------------------------------
def test_moving_forward_takes_the_stages_probability_and_forecast_and_records_history() -> None:
    opp = opportunity()
    move = opp.move_to_stage(pipeline(), "proposal", by=REP, now=at(24))
    assert (opp.stage_id, opp.stage_name, opp.probability) == ("proposal", "Proposal", 50)
    assert opp.forecast_category is ForecastCategory.BEST_CASE and opp.version == 2
    assert move.previous.stage_id == "prospecting" and not move.closed and not move.reopened
    first, second = opp.stage_history
    assert (first.left_at, first.left_by) == (at(24), REP)
    assert (second.stage_id, second.entered_at, second.left_at) == ("proposal", at(24), None)
    assert opp.closed_at is None


def test_moving_backward_is_allowed() -> None:
    opp = opportunity(stage_id="negotiation")
    opp.move_to_stage(pipeline(), "qualification", by=REP, now=at(1))
    assert (opp.stage_id, opp.probability, opp.forecast_category) == (
        "qualification",
        20,
        ForecastCategory.PIPELINE,
    )


def test_time_in_stage_is_exact_because_leaving_one_stage_is_entering_the_next() -> None:
    opp = opportunity()
    for hours, target in ((5, "qualification"), (29, "proposal"), (53, "negotiation")):
        opp.move_to_stage(pipeline(), target, by=REP, now=at(hours))
    durations = [(v.stage_id, v.left_at - v.entered_at) for v in opp.stage_history if v.left_at]
    assert durations == [
        ("prospecting", timedelta(hours=5)),
        ("qualification", timedelta(hours=24)),
        ("proposal", timedelta(hours=24)),
    ]


def test_moving_to_the_current_stage_is_refused() -> None:
    opp = opportunity()
    with pytest.raises(IllegalTransition, match="already in stage"):
        opp.move_to_stage(pipeline(), "prospecting", by=REP, now=at(1))
    assert opp.version == 1


def test_moving_to_a_stage_of_no_pipeline_names_the_field() -> None:
    with pytest.raises(InvalidRequest) as err:
        opportunity().move_to_stage(pipeline(), "limbo", by=REP, now=at(1))
    assert err.value.field == "stage_id"


def test_a_probability_override_lasts_until_the_next_move() -> None:
    opp = opportunity()
    opp.move_to_stage(pipeline(), "proposal", by=REP, now=at(1), probability=35)
    assert (opp.probability, opp.probability_overridden) == (35, True)
    assert opp.stage_history[-1].probability == 35
    opp.move_to_stage(pipeline(), "negotiation", by=REP, now=at(2))
    assert (opp.probability, opp.probability_overridden) == (80, False)


def test_closing_as_won_records_when_and_by_whom() -> None:
    opp = opportunity(stage_id="negotiation")
    move = opp.move_to_stage(pipeline(), "closed_won", by=MANAGER, now=at(3))
    assert move.closed
    assert (opp.status, opp.probability, opp.forecast_category) == (
        OpportunityStatus.WON,
        100,
        ForecastCategory.CLOSED,
    )
    assert (opp.closed_at, opp.closed_by, opp.loss_reason) == (at(3), MANAGER, None)


def test_closing_as_lost_needs_a_loss_reason() -> None:
    opp = opportunity()
    with pytest.raises(InvalidRequest) as err:
        opp.move_to_stage(pipeline(), "closed_lost", by=REP, now=at(1))
    assert err.value.field == "loss_reason"
    assert opp.status is OpportunityStatus.OPEN and opp.version == 1


def test_the_loss_reason_comes_from_the_pipelines_list_or_the_organisations_picklist() -> None:
    with pytest.raises(InvalidRequest, match="'bad luck' is not a value of the loss_reason picklist"):
        opportunity().move_to_stage(pipeline(), "closed_lost", by=REP, now=at(1), loss_reason="bad luck")
    opp = opportunity()
    opp.move_to_stage(
        pipeline(),
        "closed_lost",
        by=REP,
        now=at(1),
        loss_reason="Bad Luck",
        default_loss_reasons=["bad luck"],
    )  # a list configured by name: its value is made of the name, any spelling of it matches
    assert (opp.status, opp.loss_reason, opp.probability) == (OpportunityStatus.LOST, "bad_luck", 0)
    custom = Pipeline(
        id="p2", name="P2", stages=[stage("a"), WON, LOST], loss_reasons=["churned"], created_at=T0
    )
    in_custom = opportunity(pipeline=custom)
    with pytest.raises(InvalidRequest, match="churned"):
        in_custom.move_to_stage(custom, "lost", by=REP, now=at(1), loss_reason="price")
    in_custom.move_to_stage(custom, "lost", by=REP, now=at(1), loss_reason="churned")
    assert in_custom.loss_reason == "churned"


def test_a_loss_reason_is_refused_when_not_losing() -> None:
    with pytest.raises(InvalidRequest) as err:
        opportunity().move_to_stage(pipeline(), "proposal", by=REP, now=at(1), loss_reason="price")
    assert err.value.field == "loss_reason"


def test_a_closed_stage_keeps_its_own_probability() -> None:
    with pytest.raises(InvalidRequest) as err:
        opportunity().move_to_stage(pipeline(), "closed_won", by=REP, now=at(1), probability=90)
    assert err.value.field == "probability"


def test_a_closed_opportunity_moves_only_through_reopen() -> None:
    opp = opportunity()
    opp.move_to_stage(pipeline(), "closed_won", by=REP, now=at(1))
    with pytest.raises(IllegalTransition, match="reopen"):
        opp.move_to_stage(pipeline(), "negotiation", by=REP, now=at(2))
    with pytest.raises(IllegalTransition, match="reopen"):
        opp.move_to_stage(pipeline(), "closed_lost", by=REP, now=at(2), loss_reason="price")
    assert opp.status is OpportunityStatus.WON and opp.version == 2


def test_reopening_returns_to_the_last_open_stage_and_clears_the_close() -> None:
    opp = opportunity()
    opp.move_to_stage(pipeline(), "proposal", by=REP, now=at(1))
    opp.move_to_stage(pipeline(), "closed_lost", by=REP, now=at(2), loss_reason="timing")
    move = opp.reopen(pipeline(), by=MANAGER, now=at(3))
    assert move.reopened and not move.closed and move.previous.stage_id == "closed_lost"
    assert (opp.stage_id, opp.probability, opp.status) == ("proposal", 50, OpportunityStatus.OPEN)
    assert (opp.closed_at, opp.closed_by, opp.loss_reason) == (None, None, None)
    assert [v.stage_id for v in opp.stage_history] == ["prospecting", "proposal", "closed_lost", "proposal"]
    assert opp.stage_history[2].left_at == at(3)


def test_reopening_into_a_named_stage_must_be_an_open_one() -> None:
    opp = opportunity()
    opp.move_to_stage(pipeline(), "closed_won", by=REP, now=at(1))
    with pytest.raises(InvalidRequest):
        opp.reopen(pipeline(), by=REP, now=at(2), stage_id="closed_lost")
    opp.reopen(pipeline(), by=REP, now=at(2), stage_id="negotiation")
    assert opp.stage_id == "negotiation"


def test_an_open_opportunity_cannot_be_reopened() -> None:
    with pytest.raises(IllegalTransition):
        opportunity().reopen(pipeline(), by=REP, now=at(1))


# -- figures ----------------------------------------------------------------------------------
def test_changing_figures_reports_what_changed_and_keeps_who_and_when() -> None:
    opp = opportunity()
    changed = opp.update(
        OpportunityChanges(amount=Decimal("15000.00"), expected_close_date=date(2027, 1, 31), name=opp.name),
        by=REP,
        now=at(1),
    )
    assert changed == ["amount", "expected_close_date"] and opp.version == 2
    amount_change = next(c for c in opp.changes if c.field == "amount")
    assert (amount_change.previous, amount_change.value, amount_change.by) == ("12500.00", "15000.00", REP)


def test_a_change_to_the_same_values_changes_nothing() -> None:
    opp = opportunity()
    assert opp.update(OpportunityChanges(amount=Decimal("12500.00")), by=REP, now=at(1)) == []
    assert opp.version == 1 and opp.changes == []


def test_only_optional_figures_can_be_cleared() -> None:
    opp = opportunity(expected_close_date=date(2027, 1, 1), owner_id="rep-1")
    assert opp.update(OpportunityChanges(owner_id=None), by=REP, now=at(1)) == ["owner_id"]
    with pytest.raises(InvalidRequest) as err:
        opp.update(OpportunityChanges(amount=None), by=REP, now=at(1))
    assert err.value.field == "amount"


def test_a_closed_opportunitys_figures_are_frozen_until_reopened() -> None:
    opp = opportunity()
    opp.move_to_stage(pipeline(), "closed_won", by=REP, now=at(1))
    with pytest.raises(IllegalTransition):
        opp.update(OpportunityChanges(amount=Decimal("1")), by=REP, now=at(2))


def test_figures_carry_what_reporting_needs() -> None:
    opp = opportunity(lead_id="lead-1", campaign_id="cmp-1", stage_id="negotiation")
    figures = opp.figures()
    assert (figures.stage_id, figures.probability, figures.amount) == ("negotiation", 80, Decimal("12500.00"))
    assert (figures.lead_id, figures.campaign_id, figures.pipeline_id) == ("lead-1", "cmp-1", "default")


# -- the case ---------------------------------------------------------------------------------
def test_only_a_closed_opportunity_is_a_case() -> None:
    with pytest.raises(IllegalTransition, match="still open"):
        build_case(opportunity(), None, [])


def test_the_case_holds_history_amount_changes_outcome_and_reason() -> None:
    opp = opportunity(lead_id="lead-9", campaign_id="cmp-2")
    opp.update(OpportunityChanges(amount=Decimal("9000.00")), by=REP, now=at(1))
    opp.update(OpportunityChanges(owner_id="rep-2"), by=REP, now=at(2))
    opp.move_to_stage(pipeline(), "closed_lost", by=REP, now=at(48), loss_reason="competitor")
    case = build_case(opp, None, [])
    assert (case.outcome, case.loss_reason, case.closed_at) == (OpportunityStatus.LOST, "competitor", at(48))
    assert (case.lead_id, case.campaign_id, case.cycle_days) == ("lead-9", "cmp-2", 2.0)
    assert [c.value for c in case.amount_changes] == ["9000.00"]
    assert [v.stage_id for v in case.stage_history] == ["prospecting", "closed_lost"]
    assert len(case.changes) == 2


@pytest.mark.parametrize(
    ("given", "domain"),
    [
        ("https://www.Engines.example/about", "engines.example"),
        ("engines.example", "engines.example"),
        ("http://shop.engines.example:8080", "shop.engines.example"),
        ("", None),
        (None, None),
    ],
)
def test_domains_are_normalised_so_one_company_matches_itself(given: str | None, domain: str | None) -> None:
    assert normalise_domain(given) == domain


# -- editing pipelines ------------------------------------------------------------------------
def test_a_pipeline_can_be_renamed_reordered_and_reweighted_while_in_use() -> None:
    p = pipeline()
    stages = [s.model_copy(update={"probability": 30}) if s.id == "qualification" else s for s in p.stages]
    stages[0], stages[1] = stages[1], stages[0]
    changed = p.revise(
        name="Sales 2", stages=stages, loss_reasons=None, stages_in_use={"qualification": 4}, now=at(1)
    )
    assert changed == ["name", "stages"] and p.version == 2 and p.updated_at == at(1)
    assert p.stage("qualification").probability == 30 and p.first_stage.id == "qualification"


def test_a_stage_holding_open_opportunities_cannot_be_removed_or_closed() -> None:
    p = pipeline()
    without_proposal = [s for s in p.stages if s.id != "proposal"]
    with pytest.raises(IllegalTransition, match="holds 2 open opportunities") as err:
        p.revise(
            name=p.name, stages=without_proposal, loss_reasons=None, stages_in_use={"proposal": 2}, now=at(1)
        )
    assert err.value.field == "stages"
    closing = [
        s.model_copy(
            update={
                "kind": StageKind.CLOSED_LOST,
                "probability": 0,
                "forecast_category": ForecastCategory.OMITTED,
            }
        )
        if s.id == "negotiation"
        else s
        for s in p.stages
    ]
    with pytest.raises(IllegalTransition, match="cannot become closed"):
        p.revise(name=p.name, stages=closing, loss_reasons=None, stages_in_use={"negotiation": 1}, now=at(1))
    # An empty stage may go.
    assert p.revise(name=p.name, stages=without_proposal, loss_reasons=None, stages_in_use={}, now=at(1)) == [
        "stages"
    ]
    assert p.version == 2


def test_an_unchanged_revision_changes_nothing() -> None:
    p = pipeline()
    assert p.revise(name=p.name, stages=p.stages, loss_reasons=None, stages_in_use={}, now=at(1)) == []
    assert p.version == 1 and p.updated_at is None


def test_opportunities_keep_their_figures_when_their_stage_is_redefined_or_removed() -> None:
    opp = opportunity(stage_id="proposal")
    p = pipeline()
    p.revise(
        name=p.name,
        stages=[s for s in p.stages if s.id != "proposal"],
        loss_reasons=None,
        stages_in_use={},
        now=at(1),
    )
    assert (opp.stage_name, opp.probability) == ("Proposal", 50)
    opp.move_to_stage(p, "negotiation", by=REP, now=at(2))
    assert opp.stage_history[0].stage_id == "proposal" and opp.stage_id == "negotiation"


# -- products, line items, contacts -----------------------------------------------------------
def product(**overrides: object) -> Product:
    data: dict[str, object] = {
        "id": "prod-1",
        "name": "Engine licence",
        "list_price": Decimal("1000.00"),
        "currency": "EUR",
        "created_at": T0,
        "updated_at": T0,
    }
    data.update(overrides)
    return Product.model_validate(data)


def test_line_items_price_from_the_catalogue_and_the_amount_follows_their_total() -> None:
    opp = opportunity()
    items = [
        LineItem.of(product(), quantity=Decimal("3")),
        LineItem.of(
            product(id="prod-2", name="Support"),
            quantity=Decimal("1"),
            unit_price=Decimal("500"),
            discount_percent=Decimal("10"),
        ),
    ]
    assert [item.total for item in items] == [Decimal("3000.00"), Decimal("450.00")]
    changed = opp.set_line_items(items, derive_amount=True, by=REP, now=at(1))
    assert changed == ["amount", "line_items"] and opp.amount == Decimal("3450.00") and opp.version == 2
    assert opp.set_line_items(items, derive_amount=True, by=REP, now=at(2)) == []
    assert opp.version == 2


def test_line_items_can_leave_the_amount_alone() -> None:
    opp = opportunity()
    assert opp.set_line_items(
        [LineItem.of(product(), quantity=Decimal("1"))], derive_amount=False, by=REP, now=at(1)
    ) == ["line_items"]
    assert opp.amount == Decimal("12500.00") and opp.version == 2


def test_line_items_whose_total_passes_the_money_bound_are_refused_naming_the_items() -> None:
    """The amount they would set could not travel in any event (Money's bound)."""
    opp = opportunity()
    dear = product(list_price=Decimal("9999999999999999.99"))
    with pytest.raises(InvalidRequest) as refused:
        opp.set_line_items(
            [LineItem.of(dear, quantity=Decimal("1")), LineItem.of(product(), quantity=Decimal("1"))],
            derive_amount=True,
            by=REP,
            now=at(1),
        )
    assert refused.value.field == "items" and opp.amount == Decimal("12500.00") and opp.version == 1
    opp.set_line_items([LineItem.of(dear, quantity=Decimal("1"))], derive_amount=True, by=REP, now=at(1))
    assert opp.amount == MONEY_MAX


def test_a_retired_product_cannot_be_sold() -> None:
    with pytest.raises(InvalidRequest, match="no longer sold"):
        LineItem.of(product(active=False), quantity=Decimal("1"))


def test_contact_roles_and_the_sales_team_are_figures_a_rep_can_change() -> None:
    opp = opportunity()
    roles = [
        ContactRole(contact_id="con-1", role="economic buyer"),
        ContactRole(contact_id="con-2", role="champion"),
    ]
    changed = opp.update(
        OpportunityChanges(contact_roles=roles, sales_team_id="team-dach"), by=REP, now=at(1)
    )
    assert changed == ["contact_roles", "sales_team_id"] and opp.contact_roles == roles
    assert opp.update(OpportunityChanges(sales_team_id=None), by=REP, now=at(2)) == ["sales_team_id"]
    with pytest.raises(InvalidRequest):
        opp.update(OpportunityChanges(contact_roles=None), by=REP, now=at(3))


# -- imports ----------------------------------------------------------------------------------
def test_an_imported_opportunity_keeps_its_original_stage_and_dates() -> None:
    imported = Opportunity.imported(
        pipeline=pipeline(),
        stage_id="closed_won",
        created_at=T0,
        closed_at=at(240),
        loss_reason=None,
        default_loss_reasons=DEFAULT_LOSS_REASONS,
        by=REP,
        now=at(9000),
        opportunity_id="opp-old",
        name="Old deal",
        account_id="acc-1",
        amount=Decimal("900"),
        currency="EUR",
    )
    won = imported.opportunity
    assert (won.status, won.created_at, won.closed_at, won.version) == (OpportunityStatus.WON, T0, at(240), 2)
    # Without a history only the dates are known: opened in the first stage, closed at the close.
    assert [(v.stage_id, v.entered_at, v.left_at) for v in won.stage_history] == [
        ("prospecting", T0, at(240)),
        ("closed_won", at(240), None),
    ]
    assert build_case(won, None, []).cycle_days == 10.0
    assert [step.snapshot.version for step in imported.steps] == [1, 2]
    assert imported.steps[0].move is None and imported.steps[1].snapshot.status is OpportunityStatus.WON


def test_an_imported_lost_opportunity_needs_a_reason_and_a_close_after_its_creation() -> None:
    common: dict[str, object] = {
        "pipeline": pipeline(),
        "stage_id": "closed_lost",
        "created_at": T0,
        "default_loss_reasons": DEFAULT_LOSS_REASONS,
        "by": REP,
        "now": at(9000),
        "opportunity_id": "o",
        "name": "n",
        "account_id": "a",
        "currency": "EUR",
    }
    with pytest.raises(InvalidRequest) as no_reason:
        Opportunity.imported(closed_at=at(1), loss_reason=None, **common)  # type: ignore[arg-type]
    assert no_reason.value.field == "loss_reason"
    with pytest.raises(InvalidRequest) as backwards:
        Opportunity.imported(closed_at=at(-1), loss_reason="price", **common)  # type: ignore[arg-type]
    assert backwards.value.field == "closed_at"
    open_one = {**common, "stage_id": "proposal"}
    with pytest.raises(InvalidRequest) as closed_open:
        Opportunity.imported(closed_at=at(1), loss_reason=None, **open_one)  # type: ignore[arg-type]
    assert closed_open.value.field == "closed_at"


def test_imported_ids_are_stable_per_kind_system_and_external_id() -> None:
    assert imported_id("account", "legacy", "A-1") == imported_id("account", "legacy", "A-1")
    assert imported_id("account", "legacy", "A-1") != imported_id("opportunity", "legacy", "A-1")


def test_the_currency_stays_while_line_items_are_priced_in_it() -> None:
    opp = opportunity()
    opp.set_line_items([LineItem.of(product(), quantity=Decimal("1"))], derive_amount=True, by=REP, now=at(1))
    with pytest.raises(InvalidRequest) as err:
        opp.update(OpportunityChanges(currency="USD"), by=REP, now=at(2))
    assert err.value.field == "currency" and opp.currency == "EUR"


def test_a_product_revision_changes_only_catalogue_fields() -> None:
    licence = product()
    assert licence.revise({"list_price": Decimal("1100.00"), "name": "Engine licence"}, now=at(1)) == [
        "list_price"
    ]
    assert licence.version == 2 and licence.updated_at == at(1)
    with pytest.raises(InvalidRequest):
        licence.revise({"id": "other"}, now=at(2))


# -- figures for reporting's breakdowns -------------------------------------------------------
def test_figures_carry_stage_order_team_region_industry_and_products() -> None:
    opp = opportunity(stage_id="proposal", sales_team_id="team-dach")
    items = [
        LineItem.of(product(), quantity=Decimal("1")),
        LineItem.of(product(id="prod-2"), quantity=Decimal("2")),
    ]
    opp.set_line_items([*items, items[0]], derive_amount=True, by=REP, now=at(1))
    team = SalesTeam(id="team-dach", name="DACH", region="DACH", created_at=T0, updated_at=T0)
    acc = Account(id="acc-1", name="Engines", industry="Machinery", created_at=T0, updated_at=T0)
    figures = opp.figures(pipeline=pipeline(), team=team, account=acc)
    assert (figures.stage_order, figures.sales_team_id, figures.sales_region) == (2, "team-dach", "DACH")
    assert (figures.account_industry, figures.product_ids) == ("Machinery", [items[0].product_id, "prod-2"])


def test_figures_leave_out_what_belongs_to_another_pipeline_team_or_is_unknown() -> None:
    opp = opportunity(sales_team_id="team-dach")
    other_team = SalesTeam(id="team-nordics", name="Nordics", region="Nordics", created_at=T0, updated_at=T0)
    other_pipeline = default_pipeline(T0).model_copy(update={"id": "renewals"})
    figures = opp.figures(pipeline=other_pipeline, team=other_team)
    assert (figures.stage_order, figures.sales_region, figures.sales_team_id) == (None, None, "team-dach")
    assert (figures.account_industry, figures.product_ids) == (None, [])


# -- moving between pipelines -----------------------------------------------------------------
def renewals() -> Pipeline:
    return Pipeline(
        id="renewals",
        name="Renewals",
        stages=[
            stage("notice", probability=60),
            stage("proposal", probability=70),
            stage("signed", StageKind.CLOSED_WON, 100),
            stage("churned", StageKind.CLOSED_LOST, 0),
        ],
        created_at=T0,
    )


def test_moving_to_another_pipeline_enters_the_named_open_stage_and_records_both_pipelines() -> None:
    opp = opportunity()
    move = opp.move_to_pipeline(pipeline(), renewals(), "notice", by=REP, now=at(3))
    assert (opp.pipeline_id, opp.stage_id, opp.probability, opp.version) == ("renewals", "notice", 60, 2)
    assert (move.previous_pipeline_id, move.previous.stage_id, move.previous.left_at) == (
        "default",
        "prospecting",
        at(3),
    )
    assert [(v.pipeline_id, v.stage_id) for v in opp.stage_history] == [
        ("default", "prospecting"),
        ("renewals", "notice"),
    ]
    opp.move_to_stage(renewals(), "signed", by=REP, now=at(4))
    assert opp.status is OpportunityStatus.WON


def test_moving_to_another_pipeline_maps_the_same_stage_or_asks_for_one() -> None:
    opp = opportunity(stage_id="proposal")
    with pytest.raises(InvalidRequest) as closed_target:
        opp.move_to_pipeline(pipeline(), renewals(), "signed", by=REP, now=at(1))
    assert closed_target.value.field == "stage_id"
    with pytest.raises(IllegalTransition) as same:
        opp.move_to_pipeline(pipeline(), pipeline(), None, by=REP, now=at(1))
    assert same.value.field == "pipeline_id"
    opp.move_to_pipeline(pipeline(), renewals(), None, by=REP, now=at(1), probability=75)
    assert (opp.stage_id, opp.probability, opp.probability_overridden) == ("proposal", 75, True)
    unmapped = opportunity(stage_id="negotiation")
    with pytest.raises(InvalidRequest, match="name the stage_id"):
        unmapped.move_to_pipeline(pipeline(), renewals(), None, by=REP, now=at(1))
    assert unmapped.pipeline_id == "default" and unmapped.version == 1


def test_a_closed_opportunity_is_reopened_before_it_changes_pipeline_and_reopens_in_its_own() -> None:
    opp = opportunity(stage_id="negotiation")
    opp.move_to_pipeline(pipeline(), renewals(), "notice", by=REP, now=at(1))
    opp.move_to_stage(renewals(), "churned", by=REP, now=at(2), loss_reason="price")
    with pytest.raises(IllegalTransition, match="reopen"):
        opp.move_to_pipeline(renewals(), pipeline(), "proposal", by=REP, now=at(3))
    # The last open stage it was in belongs to the old pipeline: reopen picks one of its own.
    opp.reopen(renewals(), by=REP, now=at(3))
    assert (opp.pipeline_id, opp.stage_id) == ("renewals", "notice")


# -- imported histories -----------------------------------------------------------------------
def history(*steps: tuple[str, int]) -> list[HistoricalStage]:
    return [HistoricalStage(stage_id=stage_id, entered_at=at(hours)) for stage_id, hours in steps]


def import_with(**overrides: object) -> Opportunity:
    args: dict[str, object] = {
        "pipeline": pipeline(),
        "stage_id": None,
        "created_at": None,
        "closed_at": None,
        "loss_reason": None,
        "default_loss_reasons": DEFAULT_LOSS_REASONS,
        "by": REP,
        "now": at(9000),
        "opportunity_id": "opp-old",
        "name": "Old deal",
        "account_id": "acc-1",
        "currency": "EUR",
    }
    args.update(overrides)
    return Opportunity.imported(**args).opportunity  # type: ignore[arg-type]


def test_an_imported_history_is_replayed_with_its_original_dates() -> None:
    imported = Opportunity.imported(
        pipeline=pipeline(),
        stage_id=None,
        created_at=None,
        closed_at=None,
        loss_reason="competitor",
        default_loss_reasons=DEFAULT_LOSS_REASONS,
        by=REP,
        now=at(9000),
        history=history(("prospecting", 0), ("negotiation", 24), ("proposal", 48), ("closed_lost", 96)),
        opportunity_id="opp-old",
        name="Old deal",
        account_id="acc-1",
        currency="EUR",
    )
    lost = imported.opportunity
    assert (lost.status, lost.loss_reason, lost.created_at, lost.closed_at, lost.version) == (
        OpportunityStatus.LOST,
        "competitor",
        T0,
        at(96),
        4,
    )
    assert [(v.stage_id, v.entered_at, v.left_at) for v in lost.stage_history] == [
        ("prospecting", T0, at(24)),
        ("negotiation", at(24), at(48)),
        ("proposal", at(48), at(96)),
        ("closed_lost", at(96), None),
    ]
    assert [(s.snapshot.stage_id, s.snapshot.version) for s in imported.steps] == [
        ("prospecting", 1),
        ("negotiation", 2),
        ("proposal", 3),
        ("closed_lost", 4),
    ]
    assert imported.steps[2].move is not None and imported.steps[2].move.previous.stage_id == "negotiation"


def test_an_imported_open_opportunity_keeps_its_current_probability() -> None:
    replayed = import_with(history=history(("prospecting", 0), ("proposal", 5)), probability=65)
    assert (replayed.stage_id, replayed.probability, replayed.stage_history[0].probability) == (
        "proposal",
        65,
        10,
    )
    plain = import_with(stage_id="negotiation", created_at=T0, probability=70)
    assert (plain.probability, plain.version, plain.created_at) == (70, 1, T0)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"history": history(("proposal", 5), ("prospecting", 1))}, "stage_history.1.entered_at"),
        ({"history": history(("prospecting", 0), ("nowhere", 1))}, "stage_history.1.stage_id"),
        (
            {"history": history(("prospecting", 0), ("closed_won", 1), ("proposal", 2))},
            "stage_history.1.stage_id",
        ),
        ({"history": history(("closed_won", 0))}, "stage_history.0.stage_id"),
        ({"history": history(("prospecting", 0), ("proposal", 1)), "stage_id": "negotiation"}, "stage_id"),
        (
            {"history": history(("prospecting", 0), ("proposal", 1)), "created_at": at(-1)},
            "stage_history.0.entered_at",
        ),
        ({"history": history(("prospecting", 0), ("closed_won", 5)), "closed_at": at(6)}, "closed_at"),
        ({"history": history(("prospecting", 0), ("proposal", 1)), "closed_at": at(1)}, "closed_at"),
        ({"history": history(("prospecting", 0), ("closed_lost", 1))}, "loss_reason"),
        ({"history": history(("prospecting", 0), ("proposal", 1)), "loss_reason": "price"}, "loss_reason"),
    ],
)
def test_an_imported_history_must_tell_the_same_story_as_the_rows_dates_and_stage(
    overrides: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidRequest) as err:
        import_with(**overrides)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("model", "row", "field"),
    [
        (OpportunityRow, {"name": "x", "account_id": "a", "amount": "10000000000000000.00"}, "amount"),
        (OpportunityRow, {"name": "x", "account_id": "a", "amount": "0.001"}, "amount"),
        (AccountRow, {"name": "x", "annual_revenue": "10000000000000000"}, "annual_revenue"),
    ],
)
def test_an_imported_row_with_money_beyond_the_bound_is_reported_naming_the_field(
    model: type[OpportunityRow | AccountRow], row: dict[str, str], field: str
) -> None:
    with pytest.raises(ValidationError) as err:
        model.model_validate({"external_id": "R-1", **row})
    assert [problem.field for problem in problems_of(err.value)] == [field]
    assert model.model_validate({"external_id": "R-1", **row, field: str(MONEY_MAX)})


def test_a_csv_row_carries_its_stage_history_in_one_cell() -> None:
    row = OpportunityRow.model_validate(
        {
            "external_id": "O-1",
            "name": "Old deal",
            "account_external_id": "A-1",
            "stage_history": "prospecting@2025-01-10T09:00:00Z | closed_won@2025-03-01T17:00:00Z",
        }
    )
    assert [(h.stage_id, h.entered_at.isoformat()) for h in row.stage_history or ()] == [
        ("prospecting", "2025-01-10T09:00:00+00:00"),
        ("closed_won", "2025-03-01T17:00:00+00:00"),
    ]
    with pytest.raises(ValidationError) as err:
        OpportunityRow.model_validate(
            {"external_id": "O-2", "name": "x", "account_id": "a", "stage_history": "prospecting 2025-01-10"}
        )
    assert problems_of(err.value)[0].field == "stage_history"


def test_a_reps_forecast_category_overrides_the_stages_until_the_next_move() -> None:
    from crm_contracts.events.opportunities import ForecastCategory
    from crm_opportunities.domain import OpportunityChanges

    opp = opportunity()
    assert (opp.forecast_category, opp.forecast_category_overridden) == (ForecastCategory.PIPELINE, False)
    assert opp.update(OpportunityChanges(forecast_category=ForecastCategory.COMMIT), by=REP, now=at(1)) == [
        "forecast_category"
    ]
    assert (opp.forecast_category, opp.forecast_category_overridden) == (ForecastCategory.COMMIT, True)
    assert opp.figures().forecast_category_overridden is True
    with pytest.raises(InvalidRequest, match="closed comes with winning"):
        opp.update(OpportunityChanges(forecast_category=ForecastCategory.CLOSED), by=REP, now=at(2))
    opp.update(OpportunityChanges(forecast_category=None), by=REP, now=at(3))
    assert (opp.forecast_category, opp.forecast_category_overridden) == (ForecastCategory.PIPELINE, False)
    opp.update(OpportunityChanges(forecast_category=ForecastCategory.BEST_CASE), by=REP, now=at(4))
    opp.move_to_stage(pipeline(), "closed_lost", by=REP, now=at(5), loss_reason="Price", loss_note="Too dear")
    assert (opp.forecast_category, opp.forecast_category_overridden) == (ForecastCategory.OMITTED, False)
    assert (opp.loss_reason, opp.loss_note, opp.competitor) == ("price", "Too dear", None)


def test_a_loss_note_or_competitor_only_comes_with_closing_lost() -> None:
    with pytest.raises(InvalidRequest, match="competitor only applies when closing as lost"):
        opportunity().move_to_stage(pipeline(), "closed_won", by=REP, now=at(1), competitor="Rival")
