"""The loss_reason picklist, a rep's forecast category and a lost deal's note and competitor, end
to end with the opportunities and reporting services as real processes over HTTP and real
Kafka: an administrator gives the reason ``price`` an alias and a new label; a rep closes a deal
lost writing the alias, with a note and the competitor; the opportunity stores the canonical
reason, ``opportunity.closed`` carries all three, and reporting's win/loss groups the deal under
``price`` with the new label. A misspelt reason is refused naming the field and the closest
values; another deal committed by the rep against its stage's default is in reporting's forecast
as commit."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from crm_contracts.events.opportunities import default_loss_reason_values
from crm_localinfra.testing import (
    RunningService,
    eventually,
    isolation_key,
    read_topic,
    running_services,
    service_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

REP = {"id": "rep-1", "name": "Rita Rep"}
ADMIN = {"id": "admin-1", "name": "Ada Admin"}


@dataclass
class Suite:
    infra: Any
    isolation: str
    services: dict[str, RunningService]
    http: httpx.AsyncClient

    async def call(self, method: str, service: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.request(method, self.services[service].base_url + path, **kwargs)

    async def ok(self, method: str, service: str, path: str, **kwargs: Any) -> Any:
        response = await self.call(method, service, path, **kwargs)
        assert response.status_code in (200, 201), f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def topic(self, name: str) -> str:
        return str(service_env(self.infra, "any", isolation=self.isolation)["topic_prefix"]) + name


@pytest.fixture(scope="module")
async def suite(infra: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Suite]:
    isolation = isolation_key()
    log_dir: Path = tmp_path_factory.mktemp("loss-reasons-e2e")
    async with running_services(
        infra, ["opportunities", "reporting"], log_dir=log_dir, isolation=isolation
    ) as services:
        async with httpx.AsyncClient(timeout=30) as http:
            yield Suite(infra, isolation, services, http)


def revised_reasons() -> list[dict[str, Any]]:
    values = [value.model_dump() for value in default_loss_reason_values()]
    for value in values:
        if value["value"] == "price":
            value.update(label="Price too high", aliases=["Too expensive", "Zu teuer"])
    return values


async def test_a_deal_lost_under_an_alias_is_reported_under_the_canonical_reason(suite: Suite) -> None:
    listed = await suite.ok("GET", "opportunities", "/picklists")
    assert [(p["name"], p["version"], p["blank_value"]) for p in listed] == [("loss_reason", 0, None)]
    assert (await suite.call("GET", "opportunities", "/picklists/lead_source")).status_code == 404

    revision = {"values": revised_reasons(), "blank_value": None, "expected_version": 0, "by": ADMIN}
    revised = await suite.ok("PUT", "opportunities", "/picklists/loss_reason", json=revision)
    assert revised["version"] == 1
    stale = await suite.call("PUT", "opportunities", "/picklists/loss_reason", json=revision)
    assert stale.status_code == 409
    announced = await read_topic(
        suite.infra.kafka_bootstrap, suite.topic("picklist.revised"), until=lambda r: len(r) >= 1
    )
    assert announced[0].key == b"loss_reason"
    assert announced[0].json()["source"] == "/crm/opportunities"

    account = await suite.ok("POST", "opportunities", "/accounts", json={"name": "Engines Ltd"})
    lost = await suite.ok(
        "POST",
        "opportunities",
        "/opportunities",
        json={"name": "Engines: fleet", "account_id": account["id"], "amount": "12000.00", "by": REP},
    )
    misspelt = await suite.call(
        "POST",
        "opportunities",
        f"/opportunities/{lost['id']}/stage",
        json={"stage_id": "closed_lost", "loss_reason": "prise", "by": REP},
    )
    assert misspelt.status_code == 422, misspelt.text
    assert (
        "'prise' is not a value of the loss_reason picklist; did you mean 'price'" in misspelt.text
        and "loss_reason" in misspelt.text
    )
    closed = await suite.ok(
        "POST",
        "opportunities",
        f"/opportunities/{lost['id']}/stage",
        json={
            "stage_id": "closed_lost",
            "loss_reason": "too-expensive",
            "loss_note": "Their budget was cut in half",
            "competitor": "Rival Motors",
            "by": REP,
        },
    )
    assert (closed["loss_reason"], closed["loss_note"], closed["competitor"]) == (
        "price",
        "Their budget was cut in half",
        "Rival Motors",
    )
    [event] = await read_topic(
        suite.infra.kafka_bootstrap, suite.topic("opportunity.closed"), until=lambda r: len(r) >= 1
    )
    data = event.json()["data"]
    assert (data["loss_reason"], data["loss_note"], data["competitor"]) == (
        "price",
        "Their budget was cut in half",
        "Rival Motors",
    )

    committed = await suite.ok(
        "POST",
        "opportunities",
        "/opportunities",
        json={
            "name": "Engines: spares",
            "account_id": account["id"],
            "amount": "3000.00",
            "currency": "EUR",
            "expected_close_date": "2026-12-15",
            "forecast_category": "commit",
            "by": REP,
        },
    )
    assert (committed["forecast_category"], committed["forecast_category_overridden"]) == ("commit", True)

    async def grouped() -> list[dict[str, Any]]:
        report = await suite.ok(
            "GET", "reporting", "/reports/win-loss", params={"group_by": "loss_reason", "currency": "EUR"}
        )
        rows = [row for row in report["rows"] if row["lost"]]
        assert [(r["group"], r["label"], r["lost"]) for r in rows] == [("price", "Price too high", 1)]
        return rows

    await eventually(grouped, timeout=60)
    as_csv = await suite.call(
        "GET",
        "reporting",
        "/reports/win-loss",
        params={"group_by": "loss_reason", "currency": "EUR", "format": "csv"},
    )
    rows = [r for r in csv.DictReader(io.StringIO(as_csv.text)) if r["lost"] == "1"]
    assert [(r["group"], r["label"]) for r in rows] == [("price", "Price too high")]

    async def forecast() -> bool:
        report = await suite.ok("GET", "reporting", "/reports/forecast")
        cells = {(r["close_month"], r["forecast_category"]): r["count"] for r in report["rows"]}
        assert cells.get(("2026-12", "commit")) == 1, json.dumps(report["rows"])
        return True

    await eventually(forecast, timeout=60)
