"""Dead letters: a message that cannot be parsed or keeps failing goes to ``<topic>.dlq``
unchanged, with the reason and its original coordinates in headers, so it can be inspected and
replayed (``crm-dlq``) while consumption goes on."""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka import ConsumerRecord
from crm_contracts.catalog import DLQ_SUFFIX
from faststream.kafka import KafkaBroker

H_ERROR = "crm-dlq-error"
H_ERROR_TYPE = "crm-dlq-error-type"
H_TOPIC = "crm-dlq-original-topic"
H_PARTITION = "crm-dlq-original-partition"
H_OFFSET = "crm-dlq-original-offset"
H_GROUP = "crm-dlq-consumer-group"
H_FAILED_AT = "crm-dlq-failed-at"
H_ATTEMPTS = "crm-dlq-attempts"
MAX_ERROR_CHARS = 2000


def dlq_topic(topic: str) -> str:
    return topic + DLQ_SUFFIX


async def send_to_dead_letters(
    broker: KafkaBroker,
    record: ConsumerRecord[bytes, bytes],
    *,
    group: str,
    error: BaseException | str,
    attempts: int,
) -> None:
    """Publish the original bytes and key to the dead-letter topic; raises if Kafka refuses,
    so the caller does not commit the offset of a message that was neither handled nor parked."""
    reason = error if isinstance(error, str) else f"{error}"
    headers = {
        H_ERROR: reason[:MAX_ERROR_CHARS],
        H_ERROR_TYPE: "str" if isinstance(error, str) else type(error).__name__,
        H_TOPIC: record.topic,
        H_PARTITION: str(record.partition),
        H_OFFSET: str(record.offset),
        H_GROUP: group,
        H_FAILED_AT: datetime.now(UTC).isoformat(),
        H_ATTEMPTS: str(attempts),
    }
    await broker.publish(record.value or b"", topic=dlq_topic(record.topic), key=record.key, headers=headers)
