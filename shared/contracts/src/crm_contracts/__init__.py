"""Event contracts of the CRM suite: install this package to publish valid events."""

from .catalog import ALL_EVENTS, BY_TOPIC, EventSpec
from .envelope import CloudEvent, new_event_id, utcnow

__all__ = ["ALL_EVENTS", "BY_TOPIC", "CloudEvent", "EventSpec", "new_event_id", "utcnow"]
