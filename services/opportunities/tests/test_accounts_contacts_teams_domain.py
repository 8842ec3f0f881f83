"""Unit tests of the account, contact and sales team rules: edits that report what changed,
a loop-free account hierarchy, a prospect becoming a customer on a won deal, and the events
that describe accounts, contacts and pipelines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from crm_contracts.events.common import Actor
from crm_contracts.events.opportunities import AccountTier, AccountType
from crm_opportunities.domain import (
    DEFAULT_LOSS_REASONS,
    MAX_HIERARCHY_DEPTH,
    Account,
    AccountChanges,
    Address,
    Contact,
    ContactChanges,
    IllegalTransition,
    InvalidRequest,
    SalesTeam,
    check_parent,
    default_pipeline,
)

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
REP = Actor(id="rep-1")


def at(hours: int) -> datetime:
    return T0 + timedelta(hours=hours)


def account(**overrides: object) -> Account:
    data: dict[str, object] = {
        "id": "acc-1",
        "name": "Analytical Engines",
        "website": "https://engines.example",
        "domain": "engines.example",
        "created_at": T0,
        "updated_at": T0,
    }
    data.update(overrides)
    return Account.model_validate(data)


def contact(**overrides: object) -> Contact:
    data: dict[str, object] = {"id": "con-1", "last_name": "Lovelace", "created_at": T0, "updated_at": T0}
    data.update(overrides)
    return Contact.model_validate(data)


# -- accounts ---------------------------------------------------------------------------------
def test_an_account_edit_reports_what_changed_and_the_event_carries_the_account_as_it_stands() -> None:
    acc = account()
    changes = AccountChanges(industry="Machinery", tier=AccountTier.A, name="Analytical Engines")
    assert acc.update(changes, ancestry=(), by=REP, now=at(1)) == ["industry", "tier"]
    assert (acc.version, acc.updated_at, acc.updated_by) == (2, at(1), REP)
    event = acc.updated_event(["industry", "tier"])
    assert (event.account_id, event.industry, event.tier, event.changed_fields) == (
        "acc-1",
        "Machinery",
        AccountTier.A,
        ["industry", "tier"],
    )
    assert (event.updated_at, event.updated_by, event.created_at) == (at(1), REP, T0)
    assert acc.update(changes, ancestry=(), by=REP, now=at(2)) == [] and acc.version == 2


@pytest.mark.parametrize("name", ["name", "type", "address"])
def test_an_accounts_name_type_and_address_cannot_be_cleared(name: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        account().update(AccountChanges.model_validate({name: None}), ancestry=(), by=REP, now=at(1))
    assert err.value.field == name


def test_a_new_website_takes_the_domain_along_only_when_the_domain_was_the_websites() -> None:
    derived = account()
    derived.update(
        AccountChanges(website="https://www.engines-group.example/"), ancestry=(), by=REP, now=at(1)
    )
    assert derived.domain == "engines-group.example"
    explicit = account(domain="engines.co.uk")
    explicit.update(AccountChanges(website="https://engines-group.example"), ancestry=(), by=REP, now=at(1))
    assert explicit.domain == "engines.co.uk"
    typed = account()
    typed.update(AccountChanges(domain="WWW.Engines.CO.UK"), ancestry=(), by=REP, now=at(1))
    assert typed.domain == "engines.co.uk"
    cleared = account()
    assert cleared.update(AccountChanges(domain=None), ancestry=(), by=REP, now=at(1)) == ["domain"]


def test_an_account_can_be_neither_its_own_parent_nor_below_its_subsidiary() -> None:
    with pytest.raises(IllegalTransition) as itself:
        check_parent("acc-1", "acc-1", ["acc-1"])
    assert itself.value.field == "parent_account_id"
    # acc-3's chain upwards is acc-3 -> acc-2 -> acc-1: acc-1 cannot go below acc-3.
    with pytest.raises(IllegalTransition, match="loop"):
        account().update(
            AccountChanges(parent_account_id="acc-3"), ancestry=["acc-3", "acc-2", "acc-1"], by=REP, now=at(1)
        )
    acc = account()
    assert acc.update(
        AccountChanges(parent_account_id="acc-9"), ancestry=["acc-9", "acc-8"], by=REP, now=at(1)
    ) == ["parent_account_id"]
    assert acc.update(AccountChanges(parent_account_id=None), ancestry=(), by=REP, now=at(2)) == [
        "parent_account_id"
    ]


def test_an_account_hierarchy_deeper_than_the_limit_is_refused() -> None:
    chain = [f"acc-p{level}" for level in range(MAX_HIERARCHY_DEPTH + 1)]
    with pytest.raises(IllegalTransition, match="levels deep"):
        check_parent("acc-1", chain[0], chain)
    check_parent("acc-1", chain[0], chain[:MAX_HIERARCHY_DEPTH])


def test_a_won_deal_makes_a_prospect_a_customer_once_and_leaves_other_relationships_alone() -> None:
    prospect = account()
    assert prospect.won_deal(by=REP, now=at(5)) == ["type"]
    assert (prospect.type, prospect.version, prospect.updated_at) == (AccountType.CUSTOMER, 2, at(5))
    assert prospect.won_deal(by=REP, now=at(6)) == [] and prospect.version == 2
    for kind in (AccountType.PARTNER, AccountType.RESELLER, AccountType.COMPETITOR):
        other = account(type=kind)
        assert other.won_deal(by=REP, now=at(5)) == [] and other.type is kind


def test_a_historical_win_does_not_turn_the_accounts_clock_back() -> None:
    edited_later = account(updated_at=at(100))
    edited_later.won_deal(by=REP, now=at(5))
    assert edited_later.updated_at == at(100) and edited_later.version == 2


def test_account_events_carry_tier_parent_and_country() -> None:
    acc = account(tier=AccountTier.B, parent_account_id="acc-group", address=Address(country="GB"))
    created = acc.created_event()
    assert (created.tier, created.parent_account_id, created.country) == (AccountTier.B, "acc-group", "GB")


# -- contacts ---------------------------------------------------------------------------------
def test_a_contact_edit_sets_role_and_flags_and_reports_what_changed() -> None:
    person = contact()
    changes = ContactChanges(
        role="economic buyer", decision_maker=True, influencer=True, email="Ada@Engines.example"
    )
    assert person.update(changes, by=REP, now=at(1)) == ["decision_maker", "email", "influencer", "role"]
    assert (person.email, person.version, person.updated_by) == ("ada@engines.example", 2, REP)
    event = person.updated_event(["role"])
    assert (event.role, event.decision_maker, event.influencer, event.changed_fields) == (
        "economic buyer",
        True,
        True,
        ["role"],
    )
    assert person.update(ContactChanges(role="economic buyer"), by=REP, now=at(2)) == []


def test_a_contact_keeps_a_name_or_an_email_and_its_flags() -> None:
    person = contact(email="ada@engines.example")
    with pytest.raises(InvalidRequest) as nameless:
        person.update(ContactChanges(last_name=None, email=None), by=REP, now=at(1))
    assert nameless.value.field == "email" and person.last_name == "Lovelace"
    assert person.update(ContactChanges(last_name=None), by=REP, now=at(1)) == ["last_name"]
    with pytest.raises(InvalidRequest) as flag:
        person.update(ContactChanges(decision_maker=None), by=REP, now=at(2))
    assert flag.value.field == "decision_maker"


def test_contact_created_carries_the_role_and_influence() -> None:
    created = contact(role="champion", influencer=True).created_event()
    assert (created.role, created.influencer, created.decision_maker) == ("champion", True, False)


# -- sales teams and pipelines ----------------------------------------------------------------
def test_a_sales_team_revision_changes_only_team_fields_and_keeps_its_name() -> None:
    team = SalesTeam(id="team-1", name="DACH", region="DACH", created_at=T0, updated_at=T0)
    assert team.revise({"region": "DACH+CH", "manager_id": "mgr-1", "name": "DACH"}, now=at(1)) == [
        "manager_id",
        "region",
    ]
    assert (team.version, team.updated_at) == (2, at(1))
    with pytest.raises(InvalidRequest) as unnamed:
        team.revise({"name": None}, now=at(2))
    assert unnamed.value.field == "name"
    with pytest.raises(InvalidRequest):
        team.revise({"opportunities": 0}, now=at(2))


def test_a_pipelines_definition_event_lists_its_stages_in_order_with_the_loss_reasons_in_force() -> None:
    pipeline = default_pipeline(T0)
    event = pipeline.defined_event(DEFAULT_LOSS_REASONS)
    assert [(s.stage_id, s.position) for s in event.stages] == [
        (stage.id, index) for index, stage in enumerate(pipeline.stages)
    ]
    assert event.loss_reasons == list(DEFAULT_LOSS_REASONS) and event.defined_at == T0
    pipeline.revise(
        name="Sales",
        stages=[pipeline.stages[1], pipeline.stages[0], *pipeline.stages[2:]],
        loss_reasons=["price"],
        stages_in_use={},
        now=at(1),
    )
    revised = pipeline.defined_event(DEFAULT_LOSS_REASONS)
    assert [s.stage_id for s in revised.stages][:2] == ["qualification", "prospecting"]
    assert (revised.loss_reasons, revised.defined_at) == (["price"], at(1))
    assert pipeline.position("prospecting") == 1 and pipeline.position("gone") is None
    assert (event.stages[2].probability, event.stages[2].forecast_category) == (50, "best_case")
