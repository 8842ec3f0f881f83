"""The runtime's outbox on the real broker and database: events written in one transaction
are published in order; a transaction that fails publishes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from crm_contracts import catalog
from crm_contracts.events.leads import LeadCaptured, lead_captured_example
from crm_localinfra.testing import eventually, isolation_key, read_topic, service_client, service_env
from crm_runtime import ServiceRuntime, ServiceSettings, UnitOfWork, make_event

pytestmark = pytest.mark.integration


def captured(n: int) -> Any:
    data = LeadCaptured.model_validate(lead_captured_example() | {"external_id": f"bulk-{n}"})
    return make_event(catalog.LEAD_CAPTURED, data, source="/probe", subject="same-aggregate", version=n)


async def test_bulk_emitted_events_are_published_in_order_and_failed_ones_never(infra: Any) -> None:
    settings = ServiceSettings(service_name="probe", **service_env(infra, "probe", isolation=isolation_key()))
    runtime = ServiceRuntime(settings)
    app = runtime.create_app(title="probe", description="runtime probe")

    async def bulk(uow: UnitOfWork) -> None:
        await uow.emit_many([(catalog.LEAD_CAPTURED, captured(n)) for n in range(1, 51)])

    async def failing(uow: UnitOfWork) -> None:
        await uow.emit(catalog.LEAD_CAPTURED, captured(99))
        raise RuntimeError("the business rule said no")

    async with service_client(app):
        with pytest.raises(RuntimeError):
            await runtime.transaction(failing)
        await runtime.transaction(bulk)
        records = await read_topic(
            infra.kafka_bootstrap, settings.topic("lead.captured"), until=lambda r: len(r) >= 50
        )

        async def drained() -> bool:
            # Deleted once Kafka acknowledged them, which can be just after a reader sees them.
            return await runtime.outbox.pending() == 0

        await eventually(drained)
    versions = [int(r.json()["sequence"]) for r in records]
    assert versions == list(range(1, 51))  # one key, one partition: insertion order kept, 99 never sent
