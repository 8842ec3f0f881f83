"""Historical import, across the opportunities and reporting services (real processes, HTTP,
real Kafka): deals imported with their history (one won with line items, one still open) show
in every opportunity report exactly as the same deals that lived through the same stages on
the same dates over HTTP.

The lived deals work a pipeline of their own and the imported ones an identical copy, so each
report filtered by pipeline shows one side alone; the two answers are then the same, but for
the pipeline's id. An export does not say when the products were put on a deal (the import
puts them on at its creation), but it gives the amount: the lived deals are given theirs at
creation too, and their products later without changing it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from crm_contracts.envelope import utcnow
from crm_localinfra.testing import RunningService, eventually, isolation_key, running_services
from crm_opportunities.domain import default_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

REP = {"id": "rep-7", "name": "Rita Rep"}
LIVED, REPLAYED = "pl-lived", "pl-replayed"
CREATED_AT = "2026-01-05T09:00:00Z"
ITEMS = [{"product_id": "widget", "quantity": 3}, {"product_id": "setup", "quantity": 1}]
AMOUNT = "559.70"  # their total at list price


@dataclass
class Suite:
    services: dict[str, RunningService]
    http: httpx.AsyncClient

    async def ok(self, method: str, service: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, self.services[service].base_url + path, **kwargs)
        assert response.status_code in (200, 201, 202), (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        return response.json()


@pytest.fixture(scope="module")
async def suite(infra: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Suite]:
    log_dir: Path = tmp_path_factory.mktemp("e2e-historical-logs")
    names = ["opportunities", "reporting"]
    async with running_services(infra, names, log_dir=log_dir, isolation=isolation_key()) as services:
        async with httpx.AsyncClient(timeout=30) as http:
            yield Suite(services, http)


async def live_deal(suite: Suite, deal_id: str, stages: list[str]) -> dict[str, Any]:
    await suite.ok(
        "POST",
        "opportunities",
        "/opportunities",
        json={
            "id": deal_id,
            "name": f"Deal {deal_id}",
            "account_id": "acc-lived",
            "pipeline_id": LIVED,
            "owner_id": "rep-7",
            "sales_team_id": "team-n",
            "expected_close_date": "2027-03-31",
            "amount": AMOUNT,
            "created_at": CREATED_AT,
            "by": REP,
        },
    )
    deal: dict[str, Any] = await suite.ok(
        "PUT",
        "opportunities",
        f"/opportunities/{deal_id}/line-items",
        json={"items": ITEMS, "derive_amount": False, "by": REP},
    )
    for stage in stages:
        deal = await suite.ok(
            "POST", "opportunities", f"/opportunities/{deal_id}/stage", json={"stage_id": stage, "by": REP}
        )
    return deal


def exported(deal: dict[str, Any]) -> dict[str, Any]:
    """The deal as another CRM's export holds it, in the copy of its pipeline."""
    row = {
        "external_id": f"x-{deal['id']}",
        "name": deal["name"],
        "account_id": "acc-replayed",
        "pipeline_id": REPLAYED,
        "owner_id": deal["owner_id"],
        "sales_team_id": "Équipe Nord",
        "expected_close_date": deal["expected_close_date"],
        "amount": deal["amount"],
        "stage_history": [
            {"stage_id": v["stage_id"], "entered_at": v["entered_at"]} for v in deal["stage_history"]
        ],
        "line_items": [{"product": i["product_name"], "quantity": i["quantity"]} for i in deal["line_items"]],
    }
    if deal["closed_at"]:
        row["closed_at"] = deal["closed_at"]
    return row


REPORTS = (
    "/reports/pipeline",
    "/reports/forecast",
    "/reports/win-loss",
    "/reports/stage-velocity",
    "/reports/stage-conversion",
    "/reports/pipeline-history?from=2026-01-01",
)


def without_freshness(report: Any) -> Any:
    if isinstance(report, dict):
        return {k: without_freshness(v) for k, v in report.items() if k not in ("as_of", "consumer_lag")}
    if isinstance(report, list):
        return [without_freshness(v) for v in report]
    return report


async def test_imported_deals_show_in_every_report_as_the_deals_that_lived_through_the_same_stages(
    suite: Suite,
) -> None:
    stages = [stage.model_dump(mode="json") for stage in default_pipeline(utcnow()).stages]
    for pipeline_id in (LIVED, REPLAYED):
        await suite.ok(
            "POST", "opportunities", "/pipelines", json={"id": pipeline_id, "name": "Sales", "stages": stages}
        )
    for path, body in (
        ("/products", {"id": "widget", "name": "Wïdget Pro", "list_price": "19.90"}),
        ("/products", {"id": "setup", "name": "Setup fee", "list_price": "500"}),
        ("/sales-teams", {"id": "team-n", "name": "Équipe Nord", "region": "North"}),
        ("/accounts", {"id": "acc-lived", "name": "Difference Gears", "industry": "Machinery"}),
        ("/accounts", {"id": "acc-replayed", "name": "Difference Gears II", "industry": "Machinery"}),
    ):
        await suite.ok("POST", "opportunities", path, json=body)

    won = await live_deal(suite, "won-1", ["qualification", "proposal", "closed_won"])
    still_open = await live_deal(suite, "open-1", ["qualification"])
    # And a deal with no account (exports hold them), won in the default pipeline.
    no_account = {"external_id": "x-orphan", "name": "Nobody's", "status": "won", "amount": "100"}
    no_account |= {"created_at": "2026-02-01T09:00:00Z", "closed_at": "2026-03-01T09:00:00Z"}
    rows = [exported(won), exported(still_open), no_account]
    body = b"\n".join(json.dumps(row).encode() for row in rows)
    job = await suite.ok(
        "POST",
        "opportunities",
        "/imports/opportunities?source_system=old-crm",
        content=body,
        headers={"content-type": "application/x-ndjson"},
    )

    async def imported() -> bool:
        state = await suite.ok("GET", "opportunities", f"/imports/{job['id']}")
        assert state["state"] in ("queued", "running", "done"), state
        return bool(state["state"] == "done" and state["applied"] == 3)

    await eventually(imported, timeout=120)

    async def reports(pipeline_id: str) -> list[Any]:
        answers = []
        for path in REPORTS:
            separator = "&" if "?" in path else "?"
            answer = await suite.ok("GET", "reporting", f"{path}{separator}pipeline_id={pipeline_id}")
            answers.append(without_freshness(answer))
        return answers

    async def both_applied() -> tuple[list[Any], list[Any]]:
        lived, replayed = await reports(LIVED), await reports(REPLAYED)
        win_loss = lived[2], replayed[2]
        # Reporting has applied every event of both sides: the won deals, the open pipeline.
        assert json.dumps(win_loss[0]).count('"won": 1') and json.dumps(win_loss[1]).count('"won": 1'), (
            win_loss
        )
        assert json.dumps(lived[0]) == json.dumps(replayed[0]).replace(REPLAYED, LIVED), (
            lived[0],
            replayed[0],
        )
        return lived, replayed

    lived, replayed = await eventually(both_applied, timeout=120)

    async def orphan_reported() -> bool:
        report = await suite.ok("GET", "reporting", "/reports/win-loss?pipeline_id=default")
        [row] = report["rows"]
        assert (row["won"], row["won_revenue"], Decimal(row["average_cycle_days"])) == (1, "100.00", 28), row
        return True

    await eventually(orphan_reported, timeout=60)
    for path, lived_answer, replayed_answer in zip(REPORTS, lived, replayed, strict=True):
        assert json.loads(json.dumps(replayed_answer).replace(REPLAYED, LIVED)) == lived_answer, path
