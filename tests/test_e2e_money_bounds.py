"""The largest amounts the suite accepts, end to end (real processes, HTTP and Kafka):
opportunities of 5,000,000,000,000,000.00 and 9,999,999,999,999,999.99 EUR are applied by
reporting exactly (their weighted sums pass int64 in ten-thousandths); nothing is dead-lettered
or set aside, and the views keep moving afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from crm_contracts.events.leads import lead_captured_example
from crm_localinfra.testing import RunningService, eventually, isolation_key, running_services

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

REP = {"id": "rep-1", "name": "Rita Rep"}
HALF_OF_TEN_TO_THE_16 = "5000000000000000.00"
LARGEST = "9999999999999999.99"


@dataclass
class Suite:
    services: dict[str, RunningService]
    http: httpx.AsyncClient

    async def ok(self, method: str, service: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, self.services[service].base_url + path, **kwargs)
        assert response.status_code in (200, 201), f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    async def metric(self, service: str, name: str) -> float:
        """The sum of a metric's samples on a service's /metrics."""
        text = (await self.http.get(self.services[service].base_url + "/metrics")).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@pytest.fixture(scope="module")
async def suite(infra: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Suite]:
    log_dir: Path = tmp_path_factory.mktemp("e2e-money-logs")
    names = ["leads", "opportunities", "reporting"]
    async with running_services(infra, names, log_dir=log_dir, isolation=isolation_key()) as services:
        async with httpx.AsyncClient(timeout=30) as http:
            yield Suite(services, http)


async def pipeline(suite: Suite, **params: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = (await suite.ok("GET", "reporting", "/reports/pipeline", params=params))[
        "rows"
    ]
    return rows


async def test_the_largest_opportunities_reach_the_pipeline_exactly_and_the_funnel_keeps_moving(
    suite: Suite,
) -> None:
    account = await suite.ok("POST", "opportunities", "/accounts", json={"name": "Engines"})
    for _ in range(2):
        opened = await suite.ok(
            "POST",
            "opportunities",
            "/opportunities",
            json={
                "name": "Engines for everyone",
                "account_id": account["id"],
                "amount": HALF_OF_TEN_TO_THE_16,
                "by": REP,
            },
        )
        assert (opened["stage_id"], opened["probability"]) == ("prospecting", 10)

    async def both_in_the_pipeline() -> Any:
        rows = await pipeline(suite)
        return rows if rows and rows[0]["count"] == 2 else None

    [row] = await eventually(both_in_the_pipeline, timeout=60)
    assert (row["currency"], Decimal(row["amount"]), Decimal(row["weighted_amount"])) == (
        "EUR",
        Decimal("10000000000000000.00"),
        Decimal("1000000000000000.0000"),
    )

    # A lead entered afterwards still reaches the funnel: nothing is stuck behind the sums.
    await suite.ok(
        "POST", "leads", "/leads", json=lead_captured_example() | {"external_id": "after-the-big-ones"}
    )

    async def funnel_counts_the_lead() -> Any:
        rows = (await suite.ok("GET", "reporting", "/reports/funnel"))["rows"]
        return rows and rows[0]["captured"] == 1

    await eventually(funnel_counts_the_lead, timeout=60)

    # The largest amount there is, alone in its owner's pipeline (at 10 % it still weighs more
    # than int64 holds in ten-thousandths): applied, not dead-lettered.
    await suite.ok(
        "POST",
        "opportunities",
        "/opportunities",
        json={
            "name": "Everything",
            "account_id": account["id"],
            "amount": LARGEST,
            "owner_id": "rep-big",
            "by": REP,
        },
    )

    async def the_largest_in_the_pipeline() -> Any:
        rows = await pipeline(suite, owner_id="rep-big")
        return rows if rows and rows[0]["count"] == 1 else None

    [largest] = await eventually(the_largest_in_the_pipeline, timeout=60)
    assert (Decimal(largest["amount"]), Decimal(largest["weighted_amount"])) == (
        Decimal(LARGEST),
        Decimal("999999999999999.9990"),
    )
    [total] = await pipeline(suite)
    assert (total["count"], Decimal(total["amount"])) == (3, Decimal("19999999999999999.99"))
    assert await suite.metric("reporting", "crm_events_dead_lettered_total") == 0
    assert await suite.metric("reporting", "crm_reporting_deltas_set_aside_total") == 0
    ready = await suite.ok("GET", "reporting", "/health/ready")
    assert ready["details"]["merger"]["set_aside_deltas"] == 0
