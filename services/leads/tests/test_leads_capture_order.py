"""Property tests: whatever order a stream of captures arrives in, and however often parts of
it are resent (same event id, or a new id for the same capture key), the stored leads end the
same, and each capture key yields exactly one ``lead.created``.

The domain-level property drives the real use cases over an in-memory store (fast, many
examples); the integration variant drives them over the real database for a few examples."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from crm_contracts.events.leads import LeadCaptured
from crm_leads.bootstrap import LeadsSettings
from crm_leads.domain import MAX_DUPLICATE_LINKS, Lead, LeadStatus
from crm_leads.picklists import Picklists
from crm_leads.repository import LeadRepository
from crm_leads.scoring import ScoringRules, default_rules
from crm_leads.use_cases import capture_lead
from crm_localinfra.testing import isolation_key, service_env
from crm_runtime import ServiceRuntime, UnitOfWork
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
KEYS = ["k1", "k2", "k3", "k4"]
EMAILS = ["ada@engines.example", "ADA@engines.example", "bob@acme.io", "carol@gmail.com"]
TITLES = [None, "CTO", "Office manager"]
PHONES = [None, "+44 20 7946 0000", "020 7946 0000", "+36 1 234 5678"]
TIMES = ["2026-11-01T10:00:00Z", "2026-11-02T10:00:00Z", "2026-11-02T10:00:00.000500Z"]


@dataclass(frozen=True)
class Delivery:
    event_id: str
    captured: LeadCaptured


captures = st.builds(
    lambda key, email, title, phone, size, at: LeadCaptured.model_validate(
        {
            "source_system": "webforms",
            "external_id": key,
            "person": {"email": email, "job_title": title, "phone": phone, "last_name": "Lovelace"},
            "company": {"size": size},
            "captured_at": at,
        }
    ),
    st.sampled_from(KEYS),
    st.sampled_from(EMAILS),
    st.sampled_from(TITLES),
    st.sampled_from(PHONES),
    st.sampled_from([None, 20, 500]),
    st.sampled_from(TIMES),
)


@st.composite
def streams_with_resends(draw: st.DrawFn, max_captures: int = 8) -> tuple[list[Delivery], list[Delivery]]:
    """A stream of captures and a shuffled delivery of it with resends mixed in."""
    stream = [
        Delivery(str(uuid.uuid4()), c) for c in draw(st.lists(captures, min_size=1, max_size=max_captures))
    ]
    resent = draw(st.lists(st.sampled_from(stream), max_size=len(stream)))
    renamed = [
        Delivery(str(uuid.uuid4()), d.captured) for d in draw(st.lists(st.sampled_from(stream), max_size=3))
    ]
    delivery = draw(st.permutations(stream + resent + renamed))
    return stream, delivery


# -- an in-memory store with the repository's semantics ------------------------------------------
@dataclass
class RecordingOutbox:
    topics: list[str] = field(default_factory=list)

    async def add(self, session: Any, topic: str, event: Any) -> None:
        self.topics.append(topic)


@dataclass
class InMemoryLeads:
    rules: ScoringRules = field(default_factory=default_rules)
    docs: dict[str, str] = field(default_factory=dict)

    async def get(self, lead_id: str, session: Any = None) -> Lead | None:
        doc = self.docs.get(lead_id)
        return Lead.model_validate_json(doc) if doc else None

    async def add(self, lead: Lead, session: Any) -> None:
        assert lead.id not in self.docs
        self.docs[lead.id] = lead.model_dump_json()

    async def update(self, lead: Lead, expected_version: int, session: Any) -> None:
        stored = await self.get(lead.id)
        assert stored is not None and stored.version == expected_version
        self.docs[lead.id] = lead.model_dump_json()

    async def find_matches(self, lead: Lead, session: Any) -> list[Lead]:
        keys = lead.match_keys
        found = []
        for doc in self.docs.values():
            other = Lead.model_validate_json(doc)
            if other.id == lead.id or other.status is LeadStatus.MERGED:
                continue
            if (
                (keys.email is not None and other.email_normalised == keys.email)
                or (keys.phone is not None and other.phone_key == keys.phone)
                or (
                    keys.company_domain
                    and keys.name
                    and (other.company_domain, other.name_key) == (keys.company_domain, keys.name)
                )
            ):
                found.append(other)
        return sorted(found, key=lambda other: (other.captured_at, other.id))[: MAX_DUPLICATE_LINKS * 2]

    async def scoring_rules(self, session: Any = None) -> ScoringRules:
        return self.rules

    async def picklists(self, session: Any = None) -> Picklists:
        return Picklists.defaults()


STATE_FIELDS = {
    "id",
    "status",
    "rating",
    "score",
    "score_explanation",
    "person",
    "company",
    "lead_source",
    "engagement",
    "captured_at",
    "email_normalised",
    "phone_key",
    "company_domain",
    "search_terms",
    "possible_duplicates",
    "duplicate_of",
}


def state_of(leads: list[Lead]) -> list[dict[str, Any]]:
    """What a reader of the lead sees; version, history and timestamps of processing differ
    with the number of deliveries by design."""
    return sorted((lead.model_dump(include=STATE_FIELDS) for lead in leads), key=lambda doc: doc["id"])


async def deliver_in_memory(deliveries: list[Delivery]) -> tuple[list[Lead], list[str]]:
    store, outbox = InMemoryLeads(), RecordingOutbox()
    seen: set[str] = set()  # the consumer's inbox
    for delivery in deliveries:
        if delivery.event_id in seen:
            continue
        seen.add(delivery.event_id)
        uow = UnitOfWork(session=cast(Any, None), outbox=cast(Any, outbox))
        await capture_lead(cast(Any, store), uow, delivery.captured, by="test", now=NOW)
    return [Lead.model_validate_json(doc) for doc in store.docs.values()], outbox.topics


@settings(max_examples=150, deadline=None)
@given(streams_with_resends())
async def test_any_order_of_resends_yields_the_same_leads(
    case: tuple[list[Delivery], list[Delivery]],
) -> None:
    stream, delivery = case
    in_order, in_order_topics = await deliver_in_memory(stream)
    shuffled, shuffled_topics = await deliver_in_memory(delivery)
    differences = [
        (a["id"], name, a[name], b[name])
        for a, b in zip(state_of(shuffled), state_of(in_order), strict=False)
        for name in a
        if a[name] != b[name]
    ]
    assert differences == []
    assert state_of(shuffled) == state_of(in_order)
    keys = {d.captured.external_id for d in stream}
    assert in_order_topics.count("lead.created") == shuffled_topics.count("lead.created") == len(keys)


async def test_two_leads_sharing_an_email_are_linked_both_ways_whichever_came_first() -> None:
    capture = LeadCaptured.model_validate(
        {
            "source_system": "webforms",
            "external_id": "a",
            "person": {"email": "ada@engines.example"},
            "captured_at": TIMES[0],
        }
    )
    first = Delivery("e1", capture)
    second = Delivery("e2", capture.model_copy(update={"external_id": "b"}))
    leads, _ = await deliver_in_memory([first, second])
    by_key = {lead.external_id: lead for lead in leads}
    assert [link.lead_id for link in by_key["a"].possible_duplicates] == [by_key["b"].id]
    assert [link.lead_id for link in by_key["b"].possible_duplicates] == [by_key["a"].id]


# -- the same property on the real database ------------------------------------------------------
@pytest.fixture(scope="module")
async def runtime(infra: Any) -> AsyncIterator[ServiceRuntime]:
    settings_ = LeadsSettings(**service_env(infra, "leads", isolation=isolation_key()))
    service = ServiceRuntime(settings_)
    yield service
    await service.client.drop_database(settings_.database_name)
    await service.client.close()


async def deliver_to_database(runtime: ServiceRuntime, deliveries: list[Delivery]) -> list[Lead]:
    db = runtime.client[f"{runtime.settings.database_name}_{uuid.uuid4().hex[:8]}"]
    repo = LeadRepository(db)
    await repo.ensure_indexes()
    seen: set[str] = set()
    try:
        for delivery in deliveries:
            if delivery.event_id in seen:
                continue
            seen.add(delivery.event_id)
            await runtime.transaction(
                lambda uow, captured=delivery.captured: capture_lead(repo, uow, captured, by="test", now=NOW)
            )
        return [Lead.model_validate({**doc, "id": doc.pop("_id")}) for doc in await db.leads.find().to_list()]
    finally:
        await runtime.client.drop_database(db.name)


@pytest.mark.integration
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=streams_with_resends(max_captures=6))
async def test_any_order_of_resends_yields_the_same_stored_leads_in_the_database(
    runtime: ServiceRuntime, case: tuple[list[Delivery], list[Delivery]]
) -> None:
    stream, delivery = case
    in_order = await deliver_to_database(runtime, stream)
    shuffled = await deliver_to_database(runtime, delivery)
    assert state_of(shuffled) == state_of(in_order)
    assert len(in_order) == len({d.captured.external_id for d in stream})
