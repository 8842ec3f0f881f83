"""Unit tests of what a conversion carries beyond ids: the lead's website fills an account's
blank, its consent is recorded on the contact with when and how it was given (never over a
newer statement), its UTM stays on the opportunity; and consent given in an import row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from crm_contracts.events.common import Actor
from crm_contracts.events.leads import LeadConverted, Utm
from crm_contracts.events.opportunities import ContactConsent
from crm_opportunities.domain import Account, Contact, Opportunity, default_pipeline
from crm_opportunities.imports import ContactRow
from crm_opportunities.use_cases import consent_of_conversion, consent_of_import_row

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
REP = Actor(id="rep-1")


def converted(**overrides: object) -> LeadConverted:
    data: dict[str, object] = {
        "lead_id": "lead-1",
        "account": {
            "account_id": "acc-1",
            "is_new": True,
            "name": "Engines",
            "website": "https://engines.example",
        },
        "contact": {
            "contact_id": "con-1",
            "is_new": True,
            "email": "ada@engines.example",
            "consent": {"do_not_email": True, "do_not_call": False},
        },
        "lead_source": "web",
        "utm": {"source": "google", "medium": "cpc", "campaign": "autumn"},
        "converted_at": "2026-11-20T10:00:00Z",
        "converted_by": {"id": "rep-1"},
        "captured_at": "2026-11-01T08:00:00Z",
    }
    data.update(overrides)
    return LeadConverted.model_validate(data)


def contact(consent: ContactConsent | None = None) -> Contact:
    return Contact(id="con-1", email="ada@engines.example", consent=consent, created_at=T0, updated_at=T0)


def test_the_lead_consent_is_recorded_as_given_at_its_capture_by_that_lead() -> None:
    consent = consent_of_conversion(converted())
    assert consent == ContactConsent(
        do_not_email=True,
        do_not_call=False,
        recorded_at=datetime(2026, 11, 1, 8, 0, tzinfo=UTC),
        source="lead conversion lead-1",
    )
    # Without the capture time (an older publisher) the conversion's time is when it was said.
    undated = consent_of_conversion(converted(captured_at=None))
    assert undated is not None and undated.recorded_at == datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def test_a_conversion_published_without_consent_records_none() -> None:
    older = converted(contact={"contact_id": "con-1", "is_new": True, "email": "ada@engines.example"})
    assert consent_of_conversion(older) is None


def test_a_contact_takes_a_leads_consent_only_over_an_older_or_missing_one() -> None:
    lead_said = ContactConsent(do_not_email=True, recorded_at=T0, source="lead conversion lead-1")
    blank = contact()
    assert blank.take_consent(lead_said, by=REP, now=T0) == ["consent"]
    assert blank.consent == lead_said and blank.version == 2

    newer = ContactConsent(do_not_email=False, recorded_at=T0 + timedelta(days=1), source="api")
    kept = contact(newer)
    assert kept.take_consent(lead_said, by=REP, now=T0) == []
    assert kept.consent == newer and kept.version == 1

    older = ContactConsent(do_not_email=False, recorded_at=T0 - timedelta(days=1), source="import crm")
    replaced = contact(older)
    assert replaced.take_consent(lead_said, by=REP, now=T0) == ["consent"]
    assert replaced.consent == lead_said
    # The same conversion again (a redelivery) changes nothing.
    assert replaced.take_consent(lead_said, by=REP, now=T0) == []


def test_the_same_flags_said_again_keep_when_they_were_first_said() -> None:
    first = ContactConsent(do_not_email=True, recorded_at=T0 - timedelta(days=3), source="api")
    held = contact(first)
    again = ContactConsent(do_not_email=True, recorded_at=T0, source="lead conversion lead-2")
    assert held.take_consent(again, by=REP, now=T0) == [] and held.consent == first


def test_a_lead_website_fills_only_an_account_without_one() -> None:
    blank = Account(id="acc-1", name="Engines", domain="engines.example", created_at=T0, updated_at=T0)
    assert blank.fill_blank_website("https://engines.example", by=REP, now=T0) == ["website"]
    assert blank.website == "https://engines.example" and blank.domain == "engines.example"
    assert blank.version == 2
    curated = Account(
        id="acc-2", name="Engines", website="https://engines.example/de", created_at=T0, updated_at=T0
    )
    assert curated.fill_blank_website("https://old.engines.example", by=REP, now=T0) == []
    assert curated.website == "https://engines.example/de" and curated.version == 1
    assert blank.fill_blank_website(None, by=REP, now=T0) == []


def test_an_opportunity_opened_from_a_lead_keeps_its_utm() -> None:
    utm = Utm(source="google", medium="cpc", campaign="autumn", term="crm", content="ad-2")
    opportunity = Opportunity.open(
        opportunity_id="opp-1",
        name="Engines deal",
        account_id="acc-1",
        pipeline=default_pipeline(T0),
        by=REP,
        now=T0,
        currency="EUR",
        amount=Decimal("100"),
        lead_source="web",
        utm=utm,
    )
    assert opportunity.utm == utm


def test_an_import_row_records_consent_only_when_it_has_the_columns() -> None:
    without = ContactRow.model_validate({"external_id": "c-1", "email": "ada@engines.example"})
    assert consent_of_import_row("legacy", without, None) is None
    stated = ContactRow.model_validate(
        {"external_id": "c-1", "email": "ada@engines.example", "do_not_call": "true"}
    )
    consent = consent_of_import_row("legacy", stated, None)
    assert consent is not None
    assert (consent.do_not_email, consent.do_not_call, consent.source) == (False, True, "import legacy")
    # A column left out keeps the contact's flag; the same flags are no new statement.
    held = ContactConsent(do_not_email=True, recorded_at=T0, source="api")
    partial = consent_of_import_row("legacy", stated, held)
    assert partial is not None and (partial.do_not_email, partial.do_not_call) == (True, True)
    same = ContactRow.model_validate(
        {"external_id": "c-1", "email": "ada@engines.example", "do_not_email": True}
    )
    assert consent_of_import_row("legacy", same, held) is held
