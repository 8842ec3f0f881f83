"""The consumers' inbox keys: which events a consumer group has applied.

CloudEvents makes an event's ``id`` unique only within its ``source``: two publishers may both
number their events 1, 2, 3. An event is therefore known by (consumer group, topic, source,
id). The key is the JSON array of those four strings, so any printable text (``|``, ``:``,
quotes) in any of them encodes unambiguously, and a key is one string (equality and ``$in``
need no sub-document field order).

Entries written before the source was part of the key (``<group>|<topic>|<id>``, "legacy")
are not rewritten: their source was never stored, so no migration could know it. Instead a
legacy entry still counts for an event with the same group, topic and id that existed when
the entry was written (event time no later than the entry's ``processed_at`` plus a clock
allowance): that is a redelivery of an event applied before the upgrade. A later event from
another publisher that happens to reuse the id is new. Nothing is migrated, so concurrent
replicas and a crash mid-upgrade need no coordination; legacy entries expire with the inbox's
TTL like any other, after which the fallback finds nothing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

# How far a producer's clock may run ahead of the consumer's for a legacy entry to still be
# recognised as the same event (event time is the producer's, processed_at the consumer's).
LEGACY_CLOCK_ALLOWANCE = timedelta(minutes=10)


def inbox_key(group: str, topic: str, source: str, event_id: str) -> str:
    """The inbox ``_id`` of one event for one consumer group."""
    return json.dumps([group, topic, source, event_id], ensure_ascii=False, separators=(",", ":"))


def legacy_inbox_key(group: str, topic: str, event_id: str) -> str:
    """The ``_id`` the inbox used before events were keyed by their source."""
    return f"{group}|{topic}|{event_id}"


def legacy_entry_covers(entry: dict[str, Any] | None, event_time: datetime) -> bool:
    """Whether a legacy inbox entry records this event: it was written after the event existed."""
    if entry is None:
        return False
    processed_at = entry.get("processed_at")
    if not isinstance(processed_at, datetime):
        return True  # no time to tell by: not applying twice is the safe side
    if processed_at.tzinfo is None:  # a client without tz_aware reads BSON dates as naive UTC
        processed_at = processed_at.replace(tzinfo=UTC)
    return event_time <= processed_at + LEGACY_CLOCK_ALLOWANCE
