"""Rebuild reporting's read models from the topics: ``python -m crm_reporting.rebuild``.

1. A new generation (``g<N+1>.*`` collections) is filled by replaying every consumed topic
   from its beginning up to its end at the start, in batches (one transaction per batch),
   through the same projection as live consumption, then its deltas are merged.
2. The ``generations`` pointer is switched to it in one transaction: from then on the API
   reads it and the live consumer writes into it.
3. Catch-up: whatever was published until the switch is replayed once more into it. The live
   consumer may have applied some of those events to the old generation only; the fold is
   idempotent, so events that both apply change nothing twice.
4. The old generation is dropped (``--keep-previous`` keeps it).

Settings come from the environment like the service's (``CRM_*``). The topics must keep
their events (retention ``-1``) for a rebuild to see everything: when a partition's earliest
offset is past 0, its first events are gone and the rebuild refuses to run (saying how many
per topic and partition) unless ``--accept-missing-events`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from crm_contracts.catalog import EventSpec
from crm_contracts.envelope import CloudEvent
from crm_runtime.events import decode
from crm_runtime.kafka import aiokafka_options
from crm_runtime.mongo import Document, create_client, in_transaction
from pydantic import ValidationError
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession

from .bootstrap import ReportingSettings
from .handlers import PROJECTED_EVENTS
from .projection import project_many
from .repository import MERGE_MAX_KEYS, Generation, ReportingRepository

log = logging.getLogger(__name__)

# Events per transaction: big enough to share fact reads, small enough for SecantusDB.
BATCH = 100


@dataclass
class RebuildResult:
    generation: int
    previous: int
    replayed: int
    caught_up: int
    skipped_invalid: int
    seconds: float
    # Events Kafka had already deleted, per logical topic and partition (accepted by the caller).
    missing_events: dict[str, dict[int, int]] = field(default_factory=dict)


class EventsMissing(Exception):
    """Kafka no longer holds a topic's first events: a rebuild would silently leave them out."""

    def __init__(self, missing: dict[str, dict[int, int]]) -> None:
        self.missing = missing
        parts = ", ".join(
            f"{topic}[{partition}]: {count}"
            for topic, partitions in sorted(missing.items())
            for partition, count in sorted(partitions.items())
        )
        total = sum(sum(p.values()) for p in missing.values())
        super().__init__(
            f"{total} event(s) were already deleted from the topics (retention), so the rebuilt "
            f"views would leave them out: {parts}. Set the topics' retention.ms to -1; to rebuild "
            "without them anyway, pass --accept-missing-events."
        )


async def missing_events(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], prefix: str
) -> dict[str, dict[int, int]]:
    """Per logical topic and partition, how many events precede the earliest one Kafka keeps
    (offsets start at 0 and the topics are never compacted, so the earliest offset counts them)."""
    missing: dict[str, dict[int, int]] = {}
    earliest = await consumer.beginning_offsets(partitions) if partitions else {}
    for tp, offset in earliest.items():
        if offset > 0:
            missing.setdefault(tp.topic[len(prefix) :], {})[tp.partition] = offset
    return missing


async def _partitions(consumer: AIOKafkaConsumer, topics: list[str]) -> list[TopicPartition]:
    found: list[TopicPartition] = []
    for topic in topics:
        # aiokafka has no public per-topic metadata request on a consumer: ask its client.
        consumer._client.add_topic(topic)
    await consumer._client.force_metadata_update()
    for topic in topics:
        found.extend(TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ()))
    return found


async def _fold_batch(
    client: AsyncMongoClient[Document], target: Generation, events: list[CloudEvent[Any]]
) -> None:
    async def work(session: AsyncClientSession) -> None:
        store = target.facts(session)
        await project_many(events, store)
        await store.flush(events=len(events))

    await in_transaction(client, work)


async def replay(
    consumer: AIOKafkaConsumer,
    ends: dict[TopicPartition, int],
    specs: dict[str, EventSpec[Any]],
    client: AsyncMongoClient[Document],
    target: Generation,
    batch: int = BATCH,
    on_invalid: Callable[[], None] = lambda: None,
    max_keys: int = MERGE_MAX_KEYS,
) -> int:
    """Fold everything from the consumer's positions up to ``ends`` into ``target``."""
    replayed = 0
    while True:
        behind = [tp for tp, end in ends.items() if await consumer.position(tp) < end]
        if not behind:
            return replayed
        records = await consumer.getmany(*behind, timeout_ms=1000, max_records=batch)
        events: list[CloudEvent[Any]] = []
        for tp, messages in records.items():
            for message in messages:
                try:
                    events.append(decode(specs[tp.topic], message.value or b""))
                except (ValidationError, ValueError):
                    on_invalid()  # it went to the dead-letter topic when it was consumed live
        if events:
            await _fold_batch(client, target, events)
            await target.merge_all(client, max_keys)
            replayed += len(events)


async def rebuild(
    settings: ReportingSettings,
    *,
    batch: int = BATCH,
    keep_previous: bool = False,
    accept_missing_events: bool = False,
) -> RebuildResult:
    started = time.monotonic()
    client = create_client(settings)
    repo = ReportingRepository(client, client[settings.database_name])
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **aiokafka_options(settings))
    skipped = 0

    def count_invalid() -> None:
        nonlocal skipped
        skipped += 1

    try:
        specs = {settings.topic(spec.topic): spec for spec in PROJECTED_EVENTS}
        await consumer.start()
        partitions = await _partitions(consumer, sorted(specs))
        # Before anything is written: a refused rebuild leaves no generation behind.
        missing = await missing_events(consumer, partitions, settings.topic_prefix)
        if missing and not accept_missing_events:
            raise EventsMissing(missing)
        if missing:
            log.warning("rebuilding without events Kafka already deleted", extra={"missing": missing})
        await repo.setup()
        live = await repo.live()
        for number in await repo.generation_numbers():
            # Left behind by an interrupted rebuild, or recreated by a write that raced a drop.
            if number != live.number:
                await repo.generation(number).drop()
        target = repo.generation(live.number + 1)
        await target.ensure_indexes()
        consumer.assign(partitions)
        if partitions:
            await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions) if partitions else {}
        replayed = await replay(
            consumer, ends, specs, client, target, batch, count_invalid, settings.merge_max_keys
        )
        await target.merge_all(client, settings.merge_max_keys)
        previous = await repo.swap(target.number, since=datetime.now(UTC))
        # Events the live consumer may have applied to the old generation only.
        ends = await consumer.end_offsets(partitions) if partitions else {}
        caught_up = await replay(
            consumer, ends, specs, client, target, batch, count_invalid, settings.merge_max_keys
        )
        await target.merge_all(client, settings.merge_max_keys)
        if not keep_previous:
            await repo.generation(previous).drop()
        return RebuildResult(
            target.number, previous, replayed, caught_up, skipped, time.monotonic() - started, missing
        )
    finally:
        await consumer.stop()
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m crm_reporting.rebuild",
        description="Replay every consumed topic into fresh read models and swap them in.",
    )
    parser.add_argument(
        "--batch", type=int, default=BATCH, help="events per transaction (default %(default)s)"
    )
    parser.add_argument(
        "--keep-previous", action="store_true", help="keep the replaced generation's collections"
    )
    parser.add_argument(
        "--accept-missing-events",
        action="store_true",
        help="rebuild even when retention already deleted some of a topic's first events "
        "(the views then leave them out); without it the rebuild refuses and says how many",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    try:
        result = asyncio.run(
            rebuild(
                ReportingSettings(),
                batch=args.batch,
                keep_previous=args.keep_previous,
                accept_missing_events=args.accept_missing_events,
            )
        )
    except EventsMissing as refused:
        print(json.dumps({"refused": str(refused), "missing_events": refused.missing}), file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
