"""Dead letters: a message that cannot be parsed or keeps failing goes to ``<topic>.dlq``
unchanged (its bytes, key and the publisher's own headers), with the reason and its original
coordinates in ``crm-dlq-*`` headers, so it can be inspected and replayed (``crm-dlq``) while
consumption goes on."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
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
# The publisher's header values travel as text; one that is not UTF-8 goes base64 under this prefix.
H_BINARY_PREFIX = "crm-dlq-b64-"
MAX_ERROR_CHARS = 2000
UNPARSEABLE = "unparseable"
OTHER_SOURCES = "other"


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
    headers = publisher_headers(record.headers or ())
    headers |= {
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


def publisher_headers(raw: Iterable[tuple[str, bytes]]) -> dict[str, str]:
    """The original record's headers as text (what the broker's publish takes), the ones that
    are not UTF-8 base64-encoded under ``crm-dlq-b64-<name>`` so that replay restores their bytes."""
    headers: dict[str, str] = {}
    for name, value in raw:
        if name.startswith("crm-dlq-"):
            continue  # a replayed dead letter failing again: its new coordinates replace these
        try:
            headers[name] = (value or b"").decode()
        except UnicodeDecodeError:
            headers[H_BINARY_PREFIX + name] = base64.b64encode(value).decode()
    return headers


def original_headers(raw: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The publisher's headers of a dead letter, as they were (for replay)."""
    restored: list[tuple[str, bytes]] = []
    for name, value in raw:
        if name.startswith(H_BINARY_PREFIX):
            restored.append((name.removeprefix(H_BINARY_PREFIX), base64.b64decode(value)))
        elif not name.startswith("crm-dlq-"):
            restored.append((name, value))
    return restored


class SourceLabels:
    """The ``source`` label of the dead-letter counter: the event's CloudEvents source, so a
    publisher can alert on its own mistakes. Sources come from other services' messages, so the
    label's values are capped: the first ``limit`` distinct ones, then "other"."""

    def __init__(self, limit: int = 50) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def of(self, value: bytes | None) -> str:
        source = cloudevent_source(value)
        if source is None:
            return UNPARSEABLE
        if source in self._seen:
            return source
        if len(self._seen) >= self._limit:
            return OTHER_SOURCES
        self._seen.add(source)
        return source


def cloudevent_source(value: bytes | None) -> str | None:
    """The ``source`` of a structured-mode CloudEvent, if the bytes are one."""
    try:
        document = json.loads(value or b"")
    except ValueError:
        return None
    source = document.get("source") if isinstance(document, dict) else None
    return source[:200] if isinstance(source, str) and source else None
