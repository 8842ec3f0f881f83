"""The inbox knows an event by its CloudEvents (source, id) within a group and topic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from crm_runtime.inbox import LEGACY_CLOCK_ALLOWANCE, inbox_key, legacy_entry_covers, legacy_inbox_key

AT = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)


def test_two_publishers_reusing_an_id_have_different_keys() -> None:
    web = inbox_key("crm-leads", "lead.captured", "/webforms", "1")
    ads = inbox_key("crm-leads", "lead.captured", "/ad-platform", "1")
    assert web != ads
    assert web == inbox_key("crm-leads", "lead.captured", "/webforms", "1")  # a redelivery matches


def test_keys_stay_unambiguous_whatever_sources_and_ids_hold() -> None:
    parts = [
        ("g", "t", "a:b", "c"),
        ("g", "t", "a", "b:c"),
        ("g", "t", "a|b", "c"),
        ("g", "t", "a", "b|c"),
        ("g", "t", 'a","b', "c"),
        ("g", "t", "a", '","c'),
        ("g", "t", "a\\", "c"),
        ("g", "t|a", "b", "c"),
        ("g|t", "a", "b", "c"),
        ("g", "t", "ä", "ü"),
    ]
    assert len({inbox_key(*p) for p in parts}) == len(parts)


def test_a_new_key_never_equals_a_key_stored_before_sources_were_part_of_it() -> None:
    # An old id "/webforms|1" must not pass for source "/webforms", id "1" (or the reverse).
    assert legacy_inbox_key("g", "t", "/webforms|1") == "g|t|/webforms|1"
    assert inbox_key("g", "t", "/webforms", "1") != legacy_inbox_key("g", "t", "/webforms|1")


def test_a_legacy_entry_covers_the_event_it_recorded_but_not_a_later_one_reusing_its_id() -> None:
    entry = {"_id": legacy_inbox_key("g", "t", "1"), "processed_at": AT}
    assert legacy_entry_covers(entry, AT - timedelta(seconds=3))  # redelivered after the upgrade
    assert legacy_entry_covers(entry, AT + LEGACY_CLOCK_ALLOWANCE)  # producer clock a little ahead
    assert not legacy_entry_covers(entry, AT + LEGACY_CLOCK_ALLOWANCE + timedelta(seconds=1))
    assert not legacy_entry_covers(None, AT)


def test_a_legacy_entry_read_without_time_zone_or_time_is_still_honoured() -> None:
    naive = {"processed_at": AT.replace(tzinfo=None)}
    assert legacy_entry_covers(naive, AT)
    assert not legacy_entry_covers(naive, AT + timedelta(hours=1))
    assert legacy_entry_covers({}, AT + timedelta(days=30))  # cannot tell: never apply twice
