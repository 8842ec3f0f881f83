"""The migration benchmark's export: deterministic, and made of rows the services accept."""

from __future__ import annotations

from dataclasses import replace

from crm_leads.imports import captured_from
from crm_opportunities.imports import AccountRow, ContactRow
from crm_opportunities.opportunity_rows import OpportunityRow
from migration_data import (
    SOURCE_SYSTEM,
    STAGES_OF,
    MigrationShape,
    Row,
    account_rows,
    contact_rows,
    lead_rows,
    opportunity_rows,
    outcome_of,
    products,
    sales_teams,
)

SHAPE = MigrationShape.of(leads=300, opportunities=400)


def export(shape: MigrationShape) -> list[list[Row]]:
    return [
        products(shape),
        sales_teams(shape),
        list(lead_rows(shape)),
        list(account_rows(shape)),
        list(contact_rows(shape)),
        list(opportunity_rows(shape)),
    ]


def test_the_same_seed_gives_the_same_export_and_another_seed_another() -> None:
    assert export(SHAPE) == export(SHAPE)
    assert export(replace(SHAPE, seed=12))[2:] != export(SHAPE)[2:]


def test_switching_line_items_off_changes_nothing_else() -> None:
    plain = list(opportunity_rows(replace(SHAPE, line_items=False)))
    full = list(opportunity_rows(SHAPE))
    assert all("line_items" not in row and "sales_team_id" not in row for row in plain)
    assert plain == [
        {name: value for name, value in row.items() if name not in ("line_items", "sales_team_id")}
        for row in full
    ]


def test_rows_validate_against_the_services_row_models() -> None:
    for row in lead_rows(SHAPE):
        captured_from(row, SOURCE_SYSTEM)
    for row in account_rows(SHAPE):
        AccountRow.model_validate(row)
    for row in contact_rows(SHAPE):
        ContactRow.model_validate(row)
    for row in opportunity_rows(SHAPE):  # line items, sales teams, deals without an account
        OpportunityRow.model_validate(row)
    for row in opportunity_rows(replace(SHAPE, line_items=False, accountless_share=0.0)):
        OpportunityRow.model_validate(row)


def test_every_parent_account_is_in_the_file_and_some_come_after_their_subsidiaries() -> None:
    rows = list(account_rows(SHAPE))
    position = {row["external_id"]: n for n, row in enumerate(rows)}
    parents = [
        (n, position[row["parent_external_id"]]) for n, row in enumerate(rows) if "parent_external_id" in row
    ]
    assert parents, "no account has a parent"
    assert any(parent > child for child, parent in parents)
    assert all("parent_external_id" not in rows[parent] for _, parent in parents)  # no chains, no cycles


def test_opportunities_carry_whole_histories_won_lost_and_open() -> None:
    rows = list(opportunity_rows(SHAPE))
    outcomes = {
        outcome: [row for row in rows if outcome_of(row) == outcome] for outcome in ("won", "lost", "open")
    }
    assert all(len(found) > len(rows) / 10 for found in outcomes.values())
    for row in rows:
        history = row["stage_history"]
        entered = [entry["entered_at"] for entry in history]
        assert entered == sorted(entered) and row["created_at"] == entered[0]
        assert row["stage_id"] == history[-1]["stage_id"]
        kinds = dict(STAGES_OF[row["pipeline_id"]])
        assert all(kinds[entry["stage_id"]] == "open" for entry in history[:-1])
    for row in outcomes["won"] + outcomes["lost"]:
        assert row["closed_at"] == row["stage_history"][-1]["entered_at"]
        assert len(row["stage_history"]) >= 2
    assert all("loss_reason" in row for row in outcomes["lost"])
    assert not any("loss_reason" in row for row in outcomes["won"])
    assert not any("loss_reason" in row or "closed_at" in row for row in outcomes["open"])
    assert any("account_external_id" not in row for row in rows)
    products_named = {item["product"] for row in rows for item in row.get("line_items", ())}
    assert all(row["currency"] == "EUR" for row in rows if "line_items" in row)  # the catalogue's
    assert any(name.startswith("prod-") for name in products_named)
    assert any(not name.startswith("prod-") for name in products_named)
    assert {row["pipeline_id"] for row in rows} == set(STAGES_OF)
