"""Shared runtime of the CRM services: one place for settings, Kafka, MongoDB, the outbox,
idempotent consumers, dead letters, health, metrics, telemetry and logs."""

from .consumer import EventConsumer, PermanentEventError
from .events import make_event
from .http import ApiError
from .service import ServiceRuntime
from .settings import ServiceSettings
from .unit_of_work import UnitOfWork

__all__ = [
    "ApiError",
    "EventConsumer",
    "PermanentEventError",
    "ServiceRuntime",
    "ServiceSettings",
    "UnitOfWork",
    "make_event",
]
