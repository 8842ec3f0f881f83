"""Money has one bound at every HTTP edge (``crm_contracts.events.common.MONEY_MAX``: 16 integer
digits, 2 decimals): an amount beyond it, or with a third decimal, is refused with 422 naming
the field before anything is read or stored (the apps are not even started here: no database
or broker is there to reach)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from crm_campaigns.bootstrap import create_app as campaigns_app
from crm_leads.bootstrap import create_app as leads_app
from crm_opportunities.bootstrap import create_app as opportunities_app
from fastapi import FastAPI

REP = {"id": "rep-1"}
TOO_MUCH = "10000000000000000.00"  # 10^16: one integer digit more than Money holds
TOO_FINE = "12.345"

APPS: dict[str, Callable[[], FastAPI]] = {
    "opportunities": opportunities_app,
    "campaigns": campaigns_app,
    "leads": leads_app,
}

CASES: list[tuple[str, str, str, Callable[[str], dict[str, Any]], str]] = [
    (
        "opportunities",
        "POST",
        "/opportunities",
        lambda money: {"name": "Deal", "account_id": "acc-1", "amount": money, "by": REP},
        "amount",
    ),
    ("opportunities", "PATCH", "/opportunities/opp-1", lambda money: {"amount": money, "by": REP}, "amount"),
    (
        "opportunities",
        "PUT",
        "/opportunities/opp-1/line-items",
        lambda money: {"items": [{"product_id": "p-1", "quantity": "1", "unit_price": money}], "by": REP},
        "items.0.unit_price",
    ),
    (
        "opportunities",
        "POST",
        "/products",
        lambda money: {"name": "Licence", "list_price": money},
        "list_price",
    ),
    (
        "opportunities",
        "POST",
        "/accounts",
        lambda money: {"name": "Engines", "annual_revenue": money},
        "annual_revenue",
    ),
    (
        "campaigns",
        "POST",
        "/campaigns",
        lambda money: {
            "name": "Fair",
            "type": "event",
            "purpose": "lead_generation",
            "budgeted_cost": money,
            "by": REP,
        },
        "budgeted_cost",
    ),
    (
        "campaigns",
        "POST",
        "/campaigns/fair/costs",
        lambda money: {"amount": f"-{money}", "currency": "EUR", "incurred_on": "2026-11-01", "by": REP},
        "amount",
    ),
    (
        "leads",
        "POST",
        "/leads/lead-1/convert",
        lambda money: {"by": REP, "opportunity": {"name": "Deal", "amount": money}},
        "opportunity.amount",
    ),
]


@pytest.fixture(scope="module")
async def clients() -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    opened: dict[str, httpx.AsyncClient] = {}
    for name, factory in APPS.items():
        transport = httpx.ASGITransport(app=factory())
        opened[name] = httpx.AsyncClient(transport=transport, base_url="http://service")
    yield opened
    for client in opened.values():
        await client.aclose()


@pytest.mark.parametrize("money", [TOO_MUCH, TOO_FINE])
@pytest.mark.parametrize(("service", "method", "path", "body", "field"), CASES)
async def test_money_beyond_the_bound_gets_422_naming_the_field(
    clients: dict[str, httpx.AsyncClient],
    service: str,
    method: str,
    path: str,
    body: Callable[[str], dict[str, Any]],
    field: str,
    money: str,
) -> None:
    response = await clients[service].request(method, path, json=body(money))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["error"] == "validation_failed"
    assert [entry["field"] for entry in problem["fields"]] == [field]
