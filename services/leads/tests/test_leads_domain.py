"""Unit tests of the lead's rules: capture, resends, lifecycle, normalisation, conversion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count

import pytest
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import LeadCaptured, LeadRating, LeadStatus
from crm_leads.domain import (
    ConversionRequest,
    Lead,
    LeadAlreadyConverted,
    LeadRuleViolation,
    OpportunityRequest,
    company_domain,
    lead_id_for,
    normalise_phone,
)

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
REP = Actor(id="rep-1")


def captured(**overrides: object) -> LeadCaptured:
    data: dict[str, object] = {
        "source_system": "webforms",
        "external_id": "f-1",
        "person": {"first_name": "Ada", "last_name": "Lovelace", "email": " Ada@Engines.Example "},
        "company": {"name": "Engines", "website": "https://www.engines.example/about"},
        "lead_source": "web",
        "captured_at": "2026-11-01T10:00:00Z",
    }
    data.update(overrides)
    return LeadCaptured.model_validate(data)


def test_capture_derives_a_stable_id_from_the_capturing_systems_key() -> None:
    lead = Lead.capture(captured(), now=NOW, by="t")
    assert lead.id == lead_id_for("webforms", "f-1")
    assert lead.id != lead_id_for("webforms", "f-2")
    assert lead.status is LeadStatus.NEW and lead.version == 1
    assert lead.email_normalised == "ada@engines.example"
    assert lead.company_domain == "engines.example"


def test_a_resend_with_the_same_content_changes_nothing() -> None:
    lead = Lead.capture(captured(), now=NOW, by="t")
    assert lead.recapture(captured(), now=NOW, by="t") == []
    assert lead.version == 1


def test_the_latest_capture_wins_whatever_the_order_of_resends() -> None:
    older = captured(person={"first_name": "Old"}, captured_at="2026-11-01T10:00:00Z")
    newer = captured(person={"first_name": "New"}, captured_at="2026-11-02T10:00:00Z")
    a = Lead.capture(older, now=NOW, by="t")
    a.recapture(newer, now=NOW, by="t")
    b = Lead.capture(newer, now=NOW, by="t")
    assert b.recapture(older, now=NOW, by="t") == []
    assert a.person == b.person and a.person.first_name == "New"
    assert a.captured_at == b.captured_at


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("+44 20 7946-0000", "+442079460000"), ("(030) 123 45", "03012345"), ("--", None), (None, None)],
)
def test_phone_numbers_are_normalised_to_digits(raw: str | None, expected: str | None) -> None:
    assert normalise_phone(raw) == expected


def test_company_domain_ignores_free_mail_providers() -> None:
    assert company_domain(None, "someone@gmail.com") is None
    assert company_domain(None, "someone@acme.io") == "acme.io"
    assert company_domain("http://WWW.Acme.io:8080/x", None) == "acme.io"


def test_lifecycle_refuses_illegal_transitions_and_keeps_history() -> None:
    lead = Lead.capture(captured(), now=NOW, by="t")
    lead.move_to(LeadStatus.WORKING, now=NOW, by="rep-1")
    lead.disqualify("no budget", now=NOW + timedelta(minutes=1), by="rep-1")
    with pytest.raises(LeadRuleViolation, match="disqualified lead cannot become qualified"):
        lead.move_to(LeadStatus.QUALIFIED, now=NOW, by="rep-1")
    assert [h.action for h in lead.history] == ["captured", "status_changed", "status_changed"]
    assert lead.history[-1].detail == "no budget" and lead.history[-1].by == "rep-1"
    assert lead.version == 3


def test_only_qualified_leads_convert_unless_explicitly_allowed() -> None:
    lead = Lead.capture(captured(), now=NOW, by="t")
    with pytest.raises(LeadRuleViolation, match="only qualified leads convert"):
        lead.convert(ConversionRequest(), now=NOW, by=REP)
    converted = lead.convert(ConversionRequest(allow_unqualified=True), now=NOW, by=REP)
    assert converted.lead_id == lead.id and lead.status is LeadStatus.CONVERTED


def test_conversion_carries_new_ids_source_and_campaign_and_cannot_happen_twice() -> None:
    lead = Lead.capture(captured(campaign_id="camp-1"), now=NOW, by="t")
    lead.qualify(LeadRating.HOT, now=NOW, by="rep-1", score=80)
    ids = (f"id-{n}" for n in count(1))
    event = lead.convert(
        ConversionRequest(opportunity=OpportunityRequest(name="Engines deal", amount="5000")),
        now=NOW,
        by=REP,
        new_id=lambda: next(ids),
    )
    assert (event.account.account_id, event.contact.contact_id) == ("id-1", "id-2")
    assert event.opportunity is not None and event.opportunity.opportunity_id == "id-3"
    assert event.account.is_new and event.account.domain == "engines.example"
    assert event.lead_source.value == "web" and event.campaign_id == "camp-1"
    assert lead.conversion is not None and lead.conversion.opportunity_id == "id-3"
    with pytest.raises(LeadAlreadyConverted):
        lead.convert(ConversionRequest(), now=NOW, by=REP)


def test_conversion_into_an_existing_account_reuses_its_id() -> None:
    lead = Lead.capture(captured(), now=NOW, by="t")
    lead.qualify(LeadRating.WARM, now=NOW, by="rep-1")
    event = lead.convert(ConversionRequest(existing_account_id="acc-9"), now=NOW, by=REP)
    assert event.account.account_id == "acc-9" and not event.account.is_new
    assert event.opportunity is None
