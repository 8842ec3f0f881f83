"""The organisation's picklists: how a capture's spelling is folded into a canonical value, what
blanks and unknown values get, and which revisions are refused. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from crm_contracts.events.leads import LeadCaptured, LeadOrigin, LeadSource
from crm_contracts.events.picklists import PicklistName, PicklistValue, UnknownValues
from crm_leads.domain import Lead
from crm_leads.picklists import (
    Picklist,
    Picklists,
    UnknownPicklistValue,
    ValueRemoved,
    spelling_key,
)
from crm_leads.scoring import default_rules
from pydantic import ValidationError

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
SOURCES = Picklist.default(PicklistName.LEAD_SOURCE)


def with_trade_fair(unknown_values: UnknownValues = UnknownValues.REJECT) -> Picklist:
    return SOURCES.revised(
        [
            *SOURCES.values,
            PicklistValue(value="trade_fair", label="Trade fair", aliases=["Messe", "Expo 2026"]),
        ],
        blank_value="unknown",
        unknown_values=unknown_values,
        now=NOW,
        by="admin-1",
    )


def captured(**fields: Any) -> LeadCaptured:
    return LeadCaptured.model_validate(
        {
            "source_system": "webforms",
            "external_id": "f-1",
            "person": {"email": "ada@engines.example"},
            "captured_at": "2026-11-01T10:00:00Z",
            **fields,
        }
    )


def test_the_defaults_are_the_former_closed_lists_plus_unknown() -> None:
    assert [v.value for v in SOURCES.values] == [member.value for member in LeadSource]
    assert "unknown" in [v.value for v in SOURCES.values] and SOURCES.blank_value == "unknown"
    origins = Picklist.default(PicklistName.LEAD_ORIGIN)
    assert [v.value for v in origins.values] == [member.value for member in LeadOrigin]
    assert SOURCES.version == 0 and SOURCES.unknown_values is UnknownValues.REJECT


@pytest.mark.parametrize(
    "spelling", ["paid_search", "Paid Search", "PAID-SEARCH", " paid.search ", "PaidSearch", "paid search!"]
)
def test_a_value_or_its_label_folds_ignoring_case_spaces_and_punctuation(spelling: str) -> None:
    assert SOURCES.resolve(spelling) == "paid_search"


def test_an_alias_folds_into_its_value_and_accents_do_not_count() -> None:
    fair = with_trade_fair()
    assert fair.resolve("messe") == "trade_fair"
    assert fair.resolve("EXPO-2026") == "trade_fair"
    assert spelling_key("Événement") == spelling_key("evenement")


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_a_missing_or_blank_source_is_unknown(blank: str | None) -> None:
    assert SOURCES.resolve(blank) == "unknown"


def test_an_unknown_value_is_refused_naming_the_field_the_value_and_the_closest_values() -> None:
    with pytest.raises(UnknownPicklistValue) as refused:
        SOURCES.resolve("Referal")
    assert refused.value.field == "lead_source" and refused.value.given == "Referal"
    assert str(refused.value) == (
        "lead_source: 'Referal' is not a value of the lead_source picklist; did you mean 'referral'?"
    )


def test_an_unknown_value_with_nothing_close_lists_the_values() -> None:
    with pytest.raises(UnknownPicklistValue, match=r"use one of web, organic_search, .*, unknown$"):
        SOURCES.resolve("carrier pigeon")


def test_with_unknown_values_other_an_unknown_value_is_kept_as_other() -> None:
    assert with_trade_fair(UnknownValues.OTHER).resolve("carrier pigeon") == "other"


def test_a_deactivated_value_is_refused_on_capture_like_an_unknown_one() -> None:
    retired = SOURCES.revised(
        [v.model_copy(update={"active": v.value != "chat"}) for v in SOURCES.values],
        blank_value="unknown",
        unknown_values=UnknownValues.REJECT,
        now=NOW,
        by="admin-1",
    )
    with pytest.raises(UnknownPicklistValue, match="'Chat' is no longer in use"):
        retired.resolve("Chat")


def test_a_revision_cannot_remove_a_value_only_deactivate_it() -> None:
    with pytest.raises(ValueRemoved, match="chat cannot be removed"):
        SOURCES.revised(
            [v for v in SOURCES.values if v.value != "chat"],
            blank_value="unknown",
            unknown_values=UnknownValues.REJECT,
            now=NOW,
            by="admin-1",
        )


@pytest.mark.parametrize(
    ("values", "blank", "unknown", "reason"),
    [
        (["web", "web"], None, UnknownValues.REJECT, "appears more than once"),
        (["web", "website"], None, UnknownValues.REJECT, "would match both"),
        (["web"], "unknown", UnknownValues.REJECT, "blank_value 'unknown' must be an active value"),
        (["web"], None, UnknownValues.OTHER, "needs an active value 'other'"),
    ],
)
def test_a_list_whose_spellings_collide_or_whose_settings_name_missing_values_is_refused(
    values: list[str], blank: str | None, unknown: UnknownValues, reason: str
) -> None:
    entries = [
        PicklistValue(value=value, label=value.title(), aliases=["web"] if value == "website" else [])
        for value in values
    ]
    with pytest.raises(ValidationError, match=reason):
        Picklist(name=PicklistName.LEAD_SOURCE, values=entries, blank_value=blank, unknown_values=unknown)


def test_a_captured_lead_holds_the_canonical_value_and_the_spelling_given() -> None:
    lists = Picklists({PicklistName.LEAD_SOURCE: with_trade_fair()})
    lead = Lead.capture(
        captured(lead_source="Messe", origin="Landing Page Form"),
        default_rules(),
        now=NOW,
        by="t",
        picklists=lists,
    )
    assert (lead.lead_source, lead.lead_source_given) == ("trade_fair", "Messe")
    assert (lead.origin, lead.origin_given) == ("landing_page_form", "Landing Page Form")
    assert lead.snapshot().lead_source == "trade_fair"


def test_a_capture_without_source_or_origin_is_unknown_from_api() -> None:
    lead = Lead.capture(captured(), default_rules(), now=NOW, by="t")
    assert (lead.lead_source, lead.lead_source_given, lead.origin) == ("unknown", None, "api")


def test_a_recapture_spelling_the_source_otherwise_changes_no_data() -> None:
    lists = Picklists({PicklistName.LEAD_SOURCE: with_trade_fair()})
    lead = Lead.capture(captured(lead_source="trade_fair"), default_rules(), now=NOW, by="t", picklists=lists)
    resent = captured(lead_source="EXPO 2026", captured_at="2026-11-02T10:00:00Z")
    changed = lead.recapture(resent, default_rules(), now=NOW, by="t", picklists=lists)
    assert "lead_source" not in changed and lead.lead_source == "trade_fair"
    assert lead.lead_source_given == "EXPO 2026"
