"""A story of leads, opportunities and a campaign (some of it imported with 2019/2020 dates),
published out of order and with duplicates, for the tests on real Kafka and the database; and
how to wait until a service has applied all of it."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from crm_contracts.catalog import BY_TOPIC
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.leads import LeadRating, LeadSource
from crm_localinfra.testing import eventually
from crm_reporting.bootstrap import ReportingSettings
from crm_reporting.repository import ReportingRepository
from crm_runtime.events import encode
from reporting_events import (
    NEGOTIATION,
    PROPOSAL,
    PROSPECTING,
    Deal,
    Lead,
    at,
    campaign_created,
    cost_recorded,
    days,
    member_added,
)


def topic_of(event: CloudEvent[Any]) -> str:
    return next(spec.topic for spec in BY_TOPIC.values() if spec.type == event.type)


def long_ago(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, 15, 30, tzinfo=UTC)


# Lead A: web, spring campaign, hot; converted into O1 (Proposal, 12500.50 at 50 %, product p1).
# Lead B: event, no campaign, cold; not converted.
# Lead C: web, spring; converted without qualification into O2, which was won; O2's figures do
#         not name the lead, only lead.converted links them.
# O3: no lead, pipeline "enterprise", owner rep-2, Prospecting 999.99; O4: lost for "price".
# Lead H and H1: imported with 2019/2020 dates, H1 won on 2 March 2020.
A = Lead("lead-a", captured=at(0), campaign="spring", owner="rep-1")
B = Lead("lead-b", captured=at(days(6)), source=LeadSource.EVENT, owner="rep-2")
C = Lead("lead-c", captured=at(days(8)), campaign="spring", owner="rep-1")
H = Lead("lead-h", captured=long_ago(2019, 11, 4), source=LeadSource.PARTNER)
O1 = Deal("opp-1", created=at(days(2)), amount="12500.50", lead_id="lead-a", products=("p1",), team="north")
O2 = Deal("opp-2", created=at(days(9)), amount="3000.00", owner="rep-1")
O3 = Deal("opp-3", created=at(days(10)), amount="999.99", pipeline="enterprise", owner="rep-2")
O4 = Deal("opp-4", created=at(days(1)), amount="450.00", owner="rep-2", currency="USD")
H1 = Deal(
    "opp-h", created=long_ago(2019, 12, 30), amount="800.00", lead_id="lead-h", close_date=date(2020, 2, 1)
)
A_CONVERTED = A.converted(3, at(days(2)), "opp-1")
O1_PROPOSAL = O1.moved(2, at(days(3)), PROSPECTING, PROPOSAL)
B_QUALIFIED = B.qualified(2, at(days(7)), LeadRating.COLD)
O2_WON = O2.close(2, at(days(18)), PROSPECTING, True)
STORY: list[CloudEvent[Any]] = [
    A_CONVERTED,  # before the lead exists
    O1_PROPOSAL,  # before the opportunity exists
    *O2_WON,
    A.created(),
    O1.created_event(),
    B_QUALIFIED,
    B_QUALIFIED,  # a redelivery
    B.created(),
    A.qualified(2, at(days(1)), LeadRating.HOT),
    C.converted(2, at(days(9)), "opp-2"),
    O2.created_event(),
    C.created(),
    O3.created_event(),
    O4.created_event(),
    *O4.close(2, at(days(12)), PROSPECTING, False, "price"),
    campaign_created("spring", "Spring fair", at(0), budget="5000.00"),
    cost_recorded("spring", 2, at(days(1)), "e1", "1500.00", "1500.00"),
    member_added("spring", "lead-a", at(0)),
    member_added("spring", "lead-c", at(days(8))),
    member_added("spring", "lead-a", at(0)),  # the same member again
    H.created(),
    H.converted(2, long_ago(2019, 12, 30), "opp-h"),
    H1.created_event(),
    H1.moved(2, long_ago(2020, 1, 10), PROSPECTING, NEGOTIATION),
    *H1.close(3, long_ago(2020, 3, 2), NEGOTIATION, True),
    A_CONVERTED,  # duplicates after the fact
    O1_PROPOSAL,
    *O2_WON,
]
NEWEST = "2026-03-20T09:00:00.123000Z"


async def publish(bootstrap: str, settings: ReportingSettings, events: list[CloudEvent[Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for event in events:
            assert event.subject is not None
            await producer.send_and_wait(
                settings.topic(topic_of(event)), encode(event), key=event.subject.encode()
            )
    finally:
        await producer.stop()


async def handled(http: httpx.AsyncClient) -> float:
    """Messages applied or recognised as duplicates, from the service's metrics."""
    metrics = (await http.get("/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(("crm_events_processed_total{", "crm_events_duplicate_total{"))
    )


async def settled(http: httpx.AsyncClient, repo: ReportingRepository, published: int) -> None:
    """Every published message consumed and every delta merged: the views are final."""

    async def done() -> bool:
        return await handled(http) == published and await (await repo.live()).pending() == 0

    await eventually(done, timeout=120)
