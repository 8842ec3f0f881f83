"""Opportunity import jobs over HTTP, on real Kafka and the MongoDB-compatible server: a file
with bad rows of every kind (a misspelled product, unknown stage, team, loss reason and
account, invalid fields, a history out of order, a duplicate, an unreadable line) ends with
each rejection listed and every good row imported whole, a closed-won deal with its history
and line items and a deal with no account among them; importing the file again emits
nothing; an open deal imported again moves on and a closed one changed is refused; a CSV
export carries history and line items in one cell each; and a deal imported closed-won with
its history emits exactly the events of one that lived through the same stages over HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from crm_localinfra.testing import (
    Record,
    eventually,
    import_ended,
    import_rejections,
    isolation_key,
    read_topic,
    service_client,
    service_env,
    started_import,
    topic_size,
)
from crm_opportunities.bootstrap import OpportunitiesSettings, create_app
from crm_opportunities.imports import imported_id

pytestmark = pytest.mark.integration

SYSTEM = "legacy"
REP = {"id": "rep-7", "name": "Rita Rep"}
NDJSON = {"content-type": "application/x-ndjson"}
TOPICS = (
    "opportunity.created",
    "opportunity.updated",
    "opportunity.stage_changed",
    "opportunity.closed",
    "account.updated",
)


@dataclass
class Service:
    http: httpx.AsyncClient
    settings: OpportunitiesSettings
    runtime: Any

    async def events(self, topic: str, subject: str, count: int) -> list[Record]:
        records = await read_topic(
            self.settings.kafka_bootstrap_servers,
            self.settings.topic(topic),
            until=lambda rs: len([r for r in rs if r.json()["subject"] == subject]) >= count,
        )
        return [r for r in records if r.json()["subject"] == subject]

    async def drained(self) -> None:
        async def empty() -> bool:
            return bool(await self.runtime.outbox.pending() == 0)

        await eventually(empty, timeout=60)

    async def topic_sizes(self) -> dict[str, int]:
        await self.drained()
        bootstrap = self.settings.kafka_bootstrap_servers
        return {topic: await topic_size(bootstrap, self.settings.topic(topic)) for topic in TOPICS}

    async def imported(self, body: bytes, headers: dict[str, str] = NDJSON) -> dict[str, Any]:
        """Upload ``body``, follow the job to its end and return it."""
        location = await started_import(
            self.http, "/imports/opportunities", body, headers["content-type"], source_system=SYSTEM
        )
        job = await import_ended(self.http, location)
        assert job["state"] == "done", job
        return job

    async def rejections(self, job: dict[str, Any]) -> dict[str, dict[str, str]]:
        """The job's rejections by external id (the row number for a row without one)."""
        return {r["external_id"] or r["row"]: r for r in await import_rejections(self.http, job)}

    async def opportunity(self, external_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/opportunities/{imported_id('opportunity', SYSTEM, external_id)}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
async def service(infra: Any) -> AsyncIterator[Service]:
    settings = OpportunitiesSettings(
        **service_env(infra, "opportunities", isolation=isolation_key()), import_chunk_rows=3
    )
    app = create_app(settings)
    async with service_client(app) as http:
        svc = Service(http, settings, app.state.runtime)
        await catalogue(http)
        yield svc
        await svc.drained()


async def catalogue(http: httpx.AsyncClient) -> None:
    """What the file's names refer to: products, a sales team, an account imported before."""
    for body, path in (
        ({"id": "widget", "name": "Wïdget Pro", "list_price": "19.90"}, "/products"),
        ({"id": "setup", "name": "Setup fee", "list_price": "500"}, "/products"),
        ({"id": "team-n", "name": "Équipe Nord", "region": "North"}, "/sales-teams"),
        (
            {
                "id": imported_id("account", SYSTEM, "A-1"),
                "name": "Analytical Engines",
                "industry": "Machinery",
            },
            "/accounts",
        ),
        ({"id": "acc-live", "name": "Difference Gears", "industry": "Machinery"}, "/accounts"),
        ({"id": "acc-replay", "name": "Difference Gears II", "industry": "Machinery"}, "/accounts"),
    ):
        response = await http.post(path, json=body)
        assert response.status_code == 201, response.text


HISTORY = [
    {"stage_id": "prospecting", "entered_at": "2025-01-10T09:00:00Z"},
    {"stage_id": "Proposal", "entered_at": "2025-02-01T09:00:00Z"},
    {"stage_id": "closed_won", "entered_at": "2025-03-01T17:00:00Z"},
]
WON = {
    "external_id": "O-1",
    "name": "Engines 2025",
    "account_external_id": "A-1",
    "owner_id": "rep-7",
    "sales_team_id": "equipe nord",
    "stage_history": HISTORY,
    "line_items": [{"product": "widget pro", "quantity": 3}, {"product": "Setup fee", "unit_price": "450"}],
    "expected_close_date": "2025-03-31",
    "currency": "EUR",
}
NO_ACCOUNT = {
    "external_id": "O-2",
    "name": "A deal nobody filed",
    "stage_id": "negotiation",
    "amount": "900",
    "created_at": "2025-06-01T09:00:00Z",
}
BAD_ROWS: list[dict[str, Any]] = [
    {"external_id": "B-1", "name": "x", "line_items": [{"product": "Widgte Pro", "quantity": 1}]},
    {"external_id": "B-2", "name": "x", "stage_id": "negotiaton"},
    {"external_id": "B-3", "name": "x", "sales_team_id": "Equipe Nrod"},
    {"external_id": "B-4", "name": "x", "stage_id": "closed_lost", "loss_reason": "competiton"},
    {"external_id": "B-5", "name": "x", "account_external_id": "A-404"},
    {"external_id": "B-6", "name": "x", "amount": "lots"},
    {"external_id": "B-7", "name": "x", "stage_history": [HISTORY[1], HISTORY[0]]},
    {"external_id": "B-8", "name": "x", "stage_id": "closed_lost"},
]


def ndjson(*rows: dict[str, Any]) -> bytes:
    return b"\n".join(json.dumps(row).encode() for row in rows) + b"\n"


async def test_bad_rows_of_every_kind_are_rejected_naming_the_column_and_every_good_row_is_imported_whole(
    service: Service,
) -> None:
    body = ndjson(WON, *BAD_ROWS[:4], NO_ACCOUNT, *BAD_ROWS[4:], WON | {"name": "again"})
    body += b"{not json\n"
    job = await service.imported(body)
    assert (job["file_rows"], job["applied"], job["rejected"]) == (12, 2, 10)
    rejected = await service.rejections(job)
    assert {k: (r["column"], r["value"]) for k, r in rejected.items() if k.startswith("B-")} == {
        "B-1": ("line_items.0.product", "Widgte Pro"),
        "B-2": ("stage_id", "negotiaton"),
        "B-3": ("sales_team_id", "Equipe Nrod"),
        "B-4": ("loss_reason", "competiton"),
        "B-5": ("account_external_id", "A-404"),
        "B-6": ("amount", "lots"),
        "B-7": ("stage_history.1.entered_at", HISTORY[0]["entered_at"]),
        "B-8": ("loss_reason", ""),
    }
    assert rejected["B-1"]["reason"].startswith("unknown product 'Widgte Pro'; did you mean 'Wïdget Pro'")
    assert rejected["B-2"]["reason"].endswith("did you mean 'negotiation'?")
    assert rejected["B-3"]["reason"].endswith("did you mean 'Équipe Nord'?")
    assert "did you mean 'competitor'" in rejected["B-4"]["reason"]  # the value, then its label
    assert "no account of 'legacy' has external id 'A-404'" in rejected["B-5"]["reason"]
    assert rejected["B-8"]["reason"].startswith("closing as lost needs a loss_reason")
    assert "at row 1" in rejected["O-1"]["reason"] and rejected["12"]["column"] == "(row)"

    won = await service.opportunity("O-1")
    assert (won["status"], won["version"], won["created_at"], won["closed_at"]) == (
        "won",
        4,
        "2025-01-10T09:00:00Z",
        "2025-03-01T17:00:00Z",
    )
    assert [(v["stage_id"], v["entered_at"]) for v in won["stage_history"]] == [
        (h["stage_id"].lower(), h["entered_at"]) for h in HISTORY
    ]
    assert [(i["product_id"], i["quantity"], i["unit_price"]) for i in won["line_items"]] == [
        ("widget", "3", "19.90"),
        ("setup", "1", "450.00"),
    ]
    assert (won["amount"], won["sales_team_id"], won["owner_id"]) == ("509.70", "team-n", "rep-7")
    nobody = await service.opportunity("O-2")
    assert (nobody["account_id"], nobody["stage_id"], nobody["amount"]) == (None, "negotiation", "900.00")
    for external_id in ("B-1", "B-5", "B-7"):
        response = await service.http.get(f"/opportunities/{imported_id('opportunity', SYSTEM, external_id)}")
        assert response.status_code == 404  # nothing of a rejected row is written

    subject = won["id"]
    assert [r.json()["time"] for r in await service.events("opportunity.stage_changed", subject, 2)] == [
        "2025-02-01T09:00:00Z",
        "2025-03-01T17:00:00Z",
    ]
    [closed] = await service.events("opportunity.closed", subject, 1)
    assert (closed.json()["data"]["won"], closed.json()["data"]["opportunity"]["sales_region"]) == (
        True,
        "North",
    )
    [became_customer] = await service.events("account.updated", imported_id("account", SYSTEM, "A-1"), 1)
    assert became_customer.json()["data"]["changed_fields"] == ["type"]
    account = (await service.http.get(f"/accounts/{imported_id('account', SYSTEM, 'A-1')}")).json()
    # Stored since, so the account's clock does not go back to the 2025 win.
    assert (account["type"], became_customer.json()["time"]) == ("customer", account["created_at"])
    team = (await service.http.get("/sales-teams/team-n")).json()
    assert team["opportunities"] == 1

    # The same file again: nothing changes, nothing is emitted, the same rows are rejected.
    before = await service.topic_sizes()
    again = await service.imported(body)
    assert (again["applied"], again["rejected"]) == (2, 10)
    assert (await service.rejections(again)).keys() == rejected.keys()
    assert await service.topic_sizes() == before
    assert (await service.opportunity("O-1"))["version"] == 4
    assert (await service.http.get("/sales-teams/team-n")).json()["opportunities"] == 1


async def test_an_open_deal_imported_again_moves_on_and_a_closed_one_changed_is_refused(
    service: Service,
) -> None:
    won = {"external_id": "O-1", "name": "Won in 2025", "stage_id": "closed_won", "amount": "4000"}
    won |= {"created_at": "2025-01-10T09:00:00Z", "closed_at": "2025-03-01T17:00:00Z"}
    await service.imported(ndjson(won, NO_ACCOUNT))
    moved = NO_ACCOUNT | {"stage_id": "proposal", "amount": "950"}
    changed_won = won | {"amount": "5000"}
    job = await service.imported(ndjson(moved, changed_won))
    assert (job["applied"], job["rejected"]) == (1, 1)
    refused = (await service.rejections(job))["O-1"]
    assert (refused["column"], refused["reason"]) == (
        "stage_id",
        f"opportunity {imported_id('opportunity', SYSTEM, 'O-1')} is closed here; "
        "reopen it before importing changes",
    )
    open_one = await service.opportunity("O-2")
    assert (open_one["stage_id"], open_one["amount"], open_one["version"]) == ("proposal", "950.00", 3)
    [updated] = await service.events("opportunity.updated", open_one["id"], 1)
    assert updated.json()["data"]["changed_fields"] == ["amount"]
    [move] = await service.events("opportunity.stage_changed", open_one["id"], 1)
    assert (move.json()["data"]["previous_stage_id"], move.json()["data"]["stage_id"]) == (
        "negotiation",
        "proposal",
    )
    assert (await service.opportunity("O-1"))["amount"] == "4000.00"

    # The deal with no account is worked on like any other; its case holds no account, and
    # not every contact that has none either.
    assert (
        await service.http.post("/contacts", json={"id": "con-loose", "last_name": "Loose"})
    ).status_code == 201
    won_here = await service.http.post(
        f"/opportunities/{open_one['id']}/stage", json={"stage_id": "closed_won", "by": REP}
    )
    assert won_here.status_code == 200, won_here.text
    [closed] = await service.events("opportunity.closed", open_one["id"], 1)
    assert "account_id" not in closed.json()["data"]["opportunity"]  # events leave null fields out
    case = (await service.http.get(f"/opportunities/{open_one['id']}/case")).json()
    assert (case["outcome"], case["account"], case["contacts"]) == ("won", None, [])


async def test_a_csv_export_gives_history_and_line_items_one_cell_each(service: Service) -> None:
    export = (
        "external_id,name,status,loss_reason,created_at,closed_at,line_items,stage_history,sales_team_id\n"
        "C-1,Lost to a rival,lost,Competitor,2025-01-10T09:00:00Z,2025-04-01T10:00:00Z,"
        "Wïdget Pro*2@18.00|setup,,Équipe Nord\n"
        "C-2,Still open,,,,,WIDGET PRO*10,"
        "prospecting@2025-05-01T09:00:00Z|Qualification@2025-05-20T09:00:00Z,\n"
        "C-3,Typo,,,,,Widget Pr0*1,,\n"
    ).encode()
    job = await service.imported(export, headers={"content-type": "text/csv"})
    assert (job["applied"], job["rejected"]) == (2, 1)
    [typo] = (await service.rejections(job)).values()
    assert (typo["external_id"], typo["column"], typo["value"]) == (
        "C-3",
        "line_items.0.product",
        "Widget Pr0",
    )
    assert "did you mean 'Wïdget Pro'" in typo["reason"]
    lost = await service.opportunity("C-1")
    assert (lost["status"], lost["loss_reason"], lost["closed_at"], lost["amount"]) == (
        "lost",
        "competitor",
        "2025-04-01T10:00:00Z",
        "536.00",
    )
    still_open = await service.opportunity("C-2")
    assert (still_open["stage_id"], still_open["amount"], still_open["created_at"]) == (
        "qualification",
        "199.00",
        "2025-05-01T09:00:00Z",
    )


# -- historical import: the events of a deal that lived through the same stages -------------------
IDS = ("opportunity_id", "account_id")
ACTORS = ("created_by", "changed_by", "closed_by", "updated_by")


def comparable(record: Record, live_id: str, replay_id: str) -> dict[str, Any]:
    """An event with what must differ between the live and the imported deal set aside: its
    id, its subject, the deal's and account's ids and who acted."""
    event = record.json()
    data = json.loads(json.dumps(event["data"]).replace(replay_id, live_id).replace("acc-replay", "acc-live"))
    for actor in ACTORS:
        data.pop(actor, None)
    return {"type": event["type"], "sequence": event["sequence"], "time": event["time"], "data": data}


async def test_a_deal_imported_closed_won_with_its_history_emits_what_one_that_lived_through_it_emitted(
    service: Service,
) -> None:
    http = service.http
    created = await http.post(
        "/opportunities",
        json={
            "id": "opp-live",
            "name": "Gears rollout",
            "account_id": "acc-live",
            "owner_id": "rep-7",
            "sales_team_id": "team-n",
            "expected_close_date": "2027-03-31",
            "created_at": "2026-01-05T09:00:00Z",
            "by": REP,
        },
    )
    assert created.status_code == 201, created.text
    items = {
        "items": [{"product_id": "widget", "quantity": 3}, {"product_id": "setup", "quantity": 1}],
        "by": REP,
    }
    assert (await http.put("/opportunities/opp-live/line-items", json=items)).status_code == 200
    for stage in ("qualification", "proposal", "closed_won"):
        moved = await http.post("/opportunities/opp-live/stage", json={"stage_id": stage, "by": REP})
        assert moved.status_code == 200, moved.text
    live = moved.json()

    # The same deal as another CRM would export it, with the dates it lived through.
    row = {
        "external_id": "O-live",
        "name": "Gears rollout",
        "account_id": "acc-replay",
        "owner_id": "rep-7",
        "sales_team_id": "team-n",
        "expected_close_date": "2027-03-31",
        "stage_history": [
            {"stage_id": v["stage_id"], "entered_at": v["entered_at"]} for v in live["stage_history"]
        ],
        "line_items": [{"product": "widget", "quantity": 3}, {"product": "setup"}],
        "closed_at": live["closed_at"],
    }
    await service.imported(ndjson(row))
    replay = await service.opportunity("O-live")
    assert (replay["version"], replay["amount"], replay["status"]) == (live["version"], live["amount"], "won")

    def of(records: list[Record], deal: str) -> list[dict[str, Any]]:
        return [comparable(r, "opp-live", replay["id"]) for r in records if r.json()["subject"] == deal]

    for topic, count in (
        ("opportunity.created", 1),
        ("opportunity.updated", 1),
        ("opportunity.stage_changed", 3),
        ("opportunity.closed", 1),
    ):
        lived = of(await service.events(topic, "opp-live", count), "opp-live")
        imported = of(await service.events(topic, replay["id"], count), replay["id"])
        if topic == "opportunity.updated":
            # The export does not say when the line items were put on: at the creation.
            assert imported[0]["time"] == imported[0]["data"].pop("updated_at") == "2026-01-05T09:00:00Z"
            for event in (*lived, *imported):
                event.pop("time")
                event["data"].pop("updated_at", None)
        assert imported == lived, topic
    for account in ("acc-live", "acc-replay"):
        [customer] = await service.events("account.updated", account, 1)
        assert customer.json()["data"]["changed_fields"] == ["type"]
