"""Unit tests of the lead's rules: capture, resends, normalisation, duplicate keys, lifecycle,
merge and conversion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count

import pytest
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import CapturedAtSource, LeadCaptured, LeadRating, LeadSource, LeadStatus
from crm_leads.domain import (
    ConversionRequest,
    DuplicateLink,
    Lead,
    LeadAlreadyConverted,
    LeadRuleViolation,
    OpportunityRequest,
    company_domain,
    lead_id_for,
    normalise_email,
    normalise_phone,
    phone_key,
    search_terms,
    search_tokens,
    shared_keys,
    timed_capture,
)
from crm_leads.scoring import default_rules

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
REP = Actor(id="rep-1")
RULES = default_rules()


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


def lead_of(**overrides: object) -> Lead:
    return Lead.capture(captured(**overrides), RULES, now=NOW, by="t")


def test_capture_derives_a_stable_id_from_the_capturing_systems_key() -> None:
    lead = lead_of()
    assert lead.id == lead_id_for("webforms", "f-1")
    assert lead.id != lead_id_for("webforms", "f-2")
    assert lead.status is LeadStatus.NEW and lead.version == 1
    assert lead.email_normalised == "ada@engines.example"
    assert lead.company_domain == "engines.example"


def test_a_resend_with_the_same_content_changes_nothing() -> None:
    lead = lead_of()
    assert lead.recapture(captured(), RULES, now=NOW, by="t") == []
    assert lead.version == 1


def test_a_resend_whose_time_has_microseconds_is_still_the_same_capture() -> None:
    # MongoDB keeps milliseconds: the stored capture must equal the incoming one.
    lead = lead_of(captured_at="2026-11-01T10:00:00.123456Z")
    assert lead.captured_at.microsecond == 123000
    assert lead.recapture(captured(captured_at="2026-11-01T10:00:00.123456Z"), RULES, now=NOW, by="t") == []


def test_the_latest_capture_wins_whatever_the_order_of_resends() -> None:
    older = captured(person={"first_name": "Old"}, captured_at="2026-11-01T10:00:00Z")
    newer = captured(person={"first_name": "New"}, captured_at="2026-11-02T10:00:00Z")
    a = Lead.capture(older, RULES, now=NOW, by="t")
    assert a.recapture(newer, RULES, now=NOW, by="t") == ["person", "captured_at"]
    b = Lead.capture(newer, RULES, now=NOW, by="t")
    assert b.recapture(older, RULES, now=NOW, by="t") == []
    assert a.person == b.person and a.person.first_name == "New"
    assert a.captured_at == b.captured_at


def test_two_different_captures_at_the_same_instant_converge_on_one_of_them() -> None:
    first = captured(person={"first_name": "One"})
    second = captured(person={"first_name": "Two"})
    a = Lead.capture(first, RULES, now=NOW, by="t")
    a.recapture(second, RULES, now=NOW, by="t")
    b = Lead.capture(second, RULES, now=NOW, by="t")
    b.recapture(first, RULES, now=NOW, by="t")
    assert a.person == b.person


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+44 20 7946-0000", "+442079460000"),
        ("0044 20 7946 0000", "+442079460000"),
        ("(030) 123 45", "03012345"),
        ("--", None),
        (None, None),
    ],
)
def test_phone_numbers_are_normalised_to_digits(raw: str | None, expected: str | None) -> None:
    assert normalise_phone(raw) == expected


def test_the_phone_key_matches_international_and_national_forms_of_a_number() -> None:
    assert phone_key("+44 20 7946 0000") == phone_key("020 7946 0000") == "079460000"[-9:]
    assert phone_key("+44 20 7946 0000") != phone_key("+44 20 7946 0001")
    assert phone_key("123") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ada.Lovelace+newsletter@Engines.Example", "ada.lovelace@engines.example"),
        ("a.d.a@googlemail.com", "ada@gmail.com"),
        (" ADA@gmail.com ", "ada@gmail.com"),
        ("not-an-address", None),
    ],
)
def test_emails_are_normalised_to_the_mailbox_they_reach(raw: str, expected: str | None) -> None:
    assert normalise_email(raw) == expected


def test_company_domain_ignores_free_mail_providers() -> None:
    assert company_domain(None, "someone@gmail.com") is None
    assert company_domain(None, "someone@acme.io") == "acme.io"
    assert company_domain("http://WWW.Acme.io:8080/x", None) == "acme.io"
    assert company_domain("acme.io/contact", "someone@other.io") == "acme.io"


def test_search_terms_are_folded_words_of_name_email_company_and_phone() -> None:
    lead = lead_of(
        person={
            "first_name": "José",
            "last_name": "Müller-Lüdenscheidt",
            "email": "jm@acme.io",
            "phone": "+49 30 1",
        },
        company={"name": "ACME Anvils GmbH"},
    )
    assert {"jose", "muller-ludenscheidt", "jm@acme.io", "jm", "acme.io", "acme", "anvils", "gmbh"} <= set(
        lead.search_terms
    )
    assert "49301" in lead.search_terms
    assert search_tokens("  JOSÉ  acme.IO ") == ["jose", "acme.io"]
    assert search_terms(lead.person, lead.company, None) == sorted(
        set(search_terms(lead.person, lead.company, None))
    )


def test_leads_share_duplicate_keys_by_email_phone_or_domain_with_the_same_name() -> None:
    a = lead_of(person={"first_name": "Ada", "last_name": "Lovelace", "email": "ada+x@engines.example"})
    b = lead_of(
        external_id="f-2",
        person={
            "first_name": "ADA",
            "last_name": "Lovelace",
            "email": "Ada@Engines.Example",
            "phone": "+44 1",
        },
    )
    assert shared_keys(a.match_keys, b.match_keys) == ["email", "company_domain+name"]
    colleague = lead_of(
        external_id="f-3", person={"first_name": "Charles", "email": "charles@engines.example"}
    )
    assert shared_keys(a.match_keys, colleague.match_keys) == []  # same company is not the same person
    by_phone = lead_of(external_id="f-4", person={"phone": "020 7946 0000"}, company={})
    other_phone = lead_of(external_id="f-5", person={"phone": "+44 20 7946 0000"}, company={})
    assert shared_keys(by_phone.match_keys, other_phone.match_keys) == ["phone"]


def test_duplicate_links_say_which_lead_came_first() -> None:
    early = lead_of(captured_at="2026-01-01T00:00:00Z")
    late = lead_of(external_id="f-2", captured_at="2026-02-01T00:00:00Z")
    assert late.link_duplicates(
        [DuplicateLink(lead_id=early.id, keys=["email"], captured_at=early.captured_at)], now=NOW, by="t"
    )
    assert early.link_duplicates(
        [DuplicateLink(lead_id=late.id, keys=["email"], captured_at=late.captured_at)], now=NOW, by="t"
    )
    assert late.duplicate_of == [early.id] and early.duplicate_of == []
    assert late.history[-1].action == "duplicates_changed" and early.id in (late.history[-1].detail or "")
    assert not late.link_duplicates(list(late.possible_duplicates), now=NOW, by="t")


def test_lifecycle_refuses_illegal_transitions_and_keeps_history() -> None:
    lead = lead_of()
    lead.work(LeadStatus.WORKING, now=NOW, by="rep-1", note="called")
    assert not lead.work(LeadStatus.WORKING, now=NOW, by="rep-1")
    lead.work(LeadStatus.NURTURING, now=NOW, by="rep-2")
    lead.disqualify("no budget", now=NOW + timedelta(minutes=1), by="rep-1")
    with pytest.raises(LeadRuleViolation, match="disqualified lead cannot become qualified") as refused:
        lead.move_to(LeadStatus.QUALIFIED, now=NOW, by="rep-1")
    assert refused.value.field == "status"
    assert [h.action for h in lead.history] == ["captured", *["status_changed"] * 3]
    assert [(h.to_status, h.by, h.detail) for h in lead.history[1:]] == [
        (LeadStatus.WORKING, "rep-1", "called"),
        (LeadStatus.NURTURING, "rep-2", None),
        (LeadStatus.DISQUALIFIED, "rep-1", "no budget"),
    ]
    assert lead.version == 4
    lead.work(LeadStatus.WORKING, now=NOW, by="rep-1")  # a disqualified lead can be reopened
    assert lead.status is LeadStatus.WORKING


def test_only_working_and_nurturing_are_set_directly() -> None:
    lead = lead_of()
    with pytest.raises(LeadRuleViolation, match="own operation"):
        lead.work(LeadStatus.QUALIFIED, now=NOW, by="rep-1")


def test_qualifying_keeps_the_reps_rating_as_an_override_of_the_score() -> None:
    lead = lead_of()
    assert lead.rating is lead.score_rating
    assert lead.qualify(LeadRating.HOT, now=NOW, by="rep-1")
    assert lead.status is LeadStatus.QUALIFIED and lead.rating is LeadRating.HOT
    assert lead.manual_rating is not None and lead.manual_rating.by == "rep-1"
    assert not lead.qualify(LeadRating.HOT, now=NOW, by="rep-1")  # nothing new
    assert lead.set_manual_rating(None, now=NOW, by="rep-1")
    assert lead.rating is lead.score_rating


def test_only_qualified_leads_convert_unless_explicitly_allowed() -> None:
    lead = lead_of()
    with pytest.raises(LeadRuleViolation, match="only qualified leads convert"):
        lead.convert(ConversionRequest(), now=NOW, by=REP, company_currency="EUR")
    converted = lead.convert(
        ConversionRequest(allow_unqualified=True), now=NOW, by=REP, company_currency="EUR"
    )
    assert converted.lead_id == lead.id and lead.status is LeadStatus.CONVERTED
    with pytest.raises(LeadAlreadyConverted):
        lead.work(LeadStatus.WORKING, now=NOW, by="rep-1")


def test_conversion_carries_new_ids_source_and_campaign_and_cannot_happen_twice() -> None:
    lead = lead_of(campaign_id="camp-1")
    lead.qualify(LeadRating.HOT, now=NOW, by="rep-1")
    ids = (f"id-{n}" for n in count(1))
    event = lead.convert(
        ConversionRequest(opportunity=OpportunityRequest(name="Engines deal", amount="5000")),
        now=NOW,
        by=REP,
        company_currency="EUR",
        new_id=lambda: next(ids),
    )
    assert (event.account.account_id, event.contact.contact_id) == ("id-1", "id-2")
    assert event.opportunity is not None and event.opportunity.opportunity_id == "id-3"
    assert event.account.is_new and event.account.domain == "engines.example"
    assert event.lead_source == "web" and event.campaign_id == "camp-1"
    assert lead.conversion is not None and lead.conversion.opportunity_id == "id-3"
    with pytest.raises(LeadAlreadyConverted):
        lead.convert(ConversionRequest(), now=NOW, by=REP, company_currency="EUR")


def test_a_conversion_opens_its_opportunity_in_the_company_currency_unless_it_names_one() -> None:
    def converted_currency(request: OpportunityRequest) -> str | None:
        lead = lead_of()
        lead.qualify(LeadRating.HOT, now=NOW, by="rep-1")
        event = lead.convert(ConversionRequest(opportunity=request), now=NOW, by=REP, company_currency="USD")
        return event.opportunity.currency if event.opportunity else None

    assert converted_currency(OpportunityRequest(name="Deal", amount="5000")) == "USD"
    assert converted_currency(OpportunityRequest(name="Deal", amount="5000", currency="GBP")) == "GBP"


def test_conversion_into_an_existing_account_reuses_its_id() -> None:
    lead = lead_of()
    lead.qualify(LeadRating.WARM, now=NOW, by="rep-1")
    event = lead.convert(
        ConversionRequest(existing_account_id="acc-9"), now=NOW, by=REP, company_currency="EUR"
    )
    assert event.account.account_id == "acc-9" and not event.account.is_new
    assert event.opportunity is None


def test_merge_fills_the_survivors_gaps_keeps_both_histories_and_ends_the_duplicate() -> None:
    survivor = lead_of(
        person={"first_name": "Ada", "email": "ada@engines.example"},
        company={"name": "Engines"},
        lead_source="other",
        consent={"do_not_call": False},
        engagement={"visits": 2},
    )
    survivor.work(LeadStatus.WORKING, now=NOW, by="rep-1")
    duplicate = lead_of(
        external_id="f-2",
        person={
            "first_name": "Adeline",
            "last_name": "Lovelace",
            "email": "ADA@engines.example",
            "phone": "+44 1234567",
        },
        company={"name": "Other name", "size": 120},
        lead_source="event",
        consent={"do_not_call": True},
        engagement={"visits": 5, "page_views": 1},
        campaign_id="camp-9",
        custom={"booth": "B12"},
    )
    outcome = survivor.merge(duplicate, RULES, now=NOW + timedelta(hours=1), by="rep-1")

    assert survivor.person.first_name == "Ada"  # the survivor's own values stay
    assert (survivor.person.last_name, survivor.person.phone) == ("Lovelace", "+44 1234567")
    assert (survivor.company.name, survivor.company.size) == ("Engines", 120)
    assert survivor.lead_source == LeadSource.EVENT and survivor.campaign_id == "camp-9"
    assert survivor.consent.do_not_call  # consent only tightens
    assert (survivor.engagement.visits, survivor.engagement.page_views) == (5, 1)
    assert survivor.custom == {"booth": "B12"}
    assert {"person.last_name", "person.phone", "company.size", "lead_source", "consent"} <= set(
        outcome.taken_fields
    )
    assert outcome.matching_keys == ["email"]
    assert survivor.status is LeadStatus.WORKING and survivor.merged_from == [duplicate.id]
    taken_over = [entry for entry in survivor.history if entry.lead_id == duplicate.id]
    assert [entry.action for entry in taken_over] == ["captured"]
    assert survivor.history[-1].action == "merged"
    assert duplicate.status is LeadStatus.MERGED and duplicate.merged_into == survivor.id
    assert duplicate.history[-1].to_status is LeadStatus.MERGED
    assert duplicate.match_keys.empty


def test_merge_refuses_itself_a_merged_or_converted_duplicate_and_a_merged_survivor() -> None:
    a, b, c = lead_of(), lead_of(external_id="f-2"), lead_of(external_id="f-3")
    with pytest.raises(LeadRuleViolation) as itself:
        a.merge(a, RULES, now=NOW, by="rep")
    assert itself.value.field == "duplicate_id"
    a.merge(b, RULES, now=NOW, by="rep")
    with pytest.raises(LeadRuleViolation, match="merged and cannot be merged"):
        c.merge(b, RULES, now=NOW, by="rep")
    with pytest.raises(LeadRuleViolation, match="was itself merged into"):
        b.merge(c, RULES, now=NOW, by="rep")
    c.convert(ConversionRequest(allow_unqualified=True), now=NOW, by=REP, company_currency="EUR")
    with pytest.raises(LeadRuleViolation, match="converted and cannot be merged"):
        a.merge(c, RULES, now=NOW, by="rep")
    with pytest.raises(LeadRuleViolation, match="was merged into"):
        b.work(LeadStatus.WORKING, now=NOW, by="rep")


def test_a_capture_for_a_merged_leads_key_updates_the_survivor_with_newer_data_only() -> None:
    survivor = lead_of(
        person={"first_name": "Ada", "email": "ada@engines.example"}, captured_at="2026-11-05T00:00:00Z"
    )
    newer = captured(
        external_id="f-2",
        person={"first_name": "Augusta", "job_title": "CTO"},
        captured_at="2026-11-06T00:00:00Z",
    )
    changed = survivor.absorb_capture(newer, RULES, now=NOW, by="t", for_lead="x")
    assert survivor.person.first_name == "Augusta" and survivor.person.job_title == "CTO"
    assert survivor.person.email == "ada@engines.example"  # empty values never erase
    assert "person" in changed and survivor.captured_at == newer.captured_at
    older = captured(
        external_id="f-2",
        person={"first_name": "Old", "phone": "+44 1234567"},
        captured_at="2026-01-01T00:00:00Z",
    )
    survivor.absorb_capture(older, RULES, now=NOW, by="t", for_lead="x")
    assert survivor.person.first_name == "Augusta" and survivor.person.phone == "+44 1234567"


EVENT_TIME = datetime(2026, 10, 5, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("captured_at", "event_time", "expected"),
    [
        (
            "2026-11-01T10:00:00Z",
            EVENT_TIME,
            (datetime(2026, 11, 1, 10, tzinfo=UTC), CapturedAtSource.PAYLOAD),
        ),
        (None, EVENT_TIME, (EVENT_TIME, CapturedAtSource.EVENT_TIME)),
        (None, None, (NOW, CapturedAtSource.RECEIVED)),
    ],
)
def test_the_business_time_is_the_captures_else_the_events_else_the_receipt(
    captured_at: str | None, event_time: datetime | None, expected: tuple[datetime, CapturedAtSource]
) -> None:
    timed = timed_capture(captured(captured_at=captured_at), event_time=event_time, received_at=NOW)
    assert (timed.captured_at, timed.captured_at_source) == expected
    lead = Lead.capture(timed, RULES, now=NOW + timedelta(hours=1), by="t")
    assert (lead.captured_at, lead.captured_at_source) == expected
    assert (lead.snapshot().captured_at, lead.snapshot().captured_at_source) == expected


def test_a_newer_capture_brings_its_time_and_where_it_came_from() -> None:
    lead = Lead.capture(captured(captured_at=None), RULES, now=NOW, by="t")
    assert lead.captured_at_source is CapturedAtSource.RECEIVED
    later = timed_capture(
        captured(captured_at=None, person={"first_name": "Ada", "job_title": "CTO"}),
        event_time=NOW + timedelta(days=1),
        received_at=NOW + timedelta(days=2),
    )
    changed = lead.recapture(later, RULES, now=NOW + timedelta(days=2), by="t")
    assert {"captured_at", "captured_at_source"} <= set(changed)
    assert (lead.captured_at, lead.captured_at_source) == (
        NOW + timedelta(days=1),
        CapturedAtSource.EVENT_TIME,
    )


def test_a_resend_without_its_own_time_and_nothing_new_keeps_the_first_time() -> None:
    lead = Lead.capture(captured(captured_at=None), RULES, now=NOW, by="t")
    later = timed_capture(captured(captured_at=None), event_time=None, received_at=NOW + timedelta(days=1))
    assert lead.recapture(later, RULES, now=NOW + timedelta(days=1), by="t") == []
    assert (lead.captured_at, lead.version) == (NOW, 1)


def test_assigning_an_owner_is_recorded_and_refused_once_the_lead_is_converted() -> None:
    lead = lead_of()
    assert lead.assign_owner("rep-7", now=NOW, by="rep-1") is True
    assert lead.owner_id == "rep-7" and lead.history[-1].action == "owner_assigned"
    assert lead.assign_owner("rep-7", now=NOW, by="rep-1") is False
    lead.convert(ConversionRequest(allow_unqualified=True), now=NOW, by=REP, company_currency="EUR")
    with pytest.raises(LeadAlreadyConverted):
        lead.assign_owner("rep-8", now=NOW, by="rep-1")


def test_conversion_carries_the_website_consent_and_utm_of_the_lead() -> None:
    lead = lead_of(
        consent={"do_not_email": True},
        utm={"source": "google", "medium": "cpc", "campaign": "autumn", "term": "crm", "content": "ad-2"},
    )
    lead.qualify(LeadRating.HOT, now=NOW, by="rep-1")
    event = lead.convert(
        ConversionRequest(opportunity=OpportunityRequest(name="Engines deal")),
        now=NOW,
        by=REP,
        company_currency="EUR",
    )
    assert event.account.website == "https://www.engines.example/about"
    assert event.contact.consent is not None
    assert (event.contact.consent.do_not_email, event.contact.consent.do_not_call) == (True, False)
    assert event.utm is not None
    assert event.utm.model_dump() == {
        "source": "google",
        "medium": "cpc",
        "campaign": "autumn",
        "term": "crm",
        "content": "ad-2",
    }
    assert event.lead_source == "web" and event.captured_at == lead.captured_at
    assert lead.snapshot().utm == event.utm


def test_a_lead_without_utm_converts_saying_so() -> None:
    lead = lead_of()
    lead.qualify(LeadRating.COLD, now=NOW, by="rep-1")
    event = lead.convert(ConversionRequest(), now=NOW, by=REP, company_currency="EUR")
    assert event.utm is None and "utm" in event.model_fields_set
    assert event.contact.consent is not None and not event.contact.consent.do_not_email
