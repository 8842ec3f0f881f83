"""``crm-dlq``: inspect and replay dead letters.

    crm-dlq list lead.captured [--limit 20]
    crm-dlq replay lead.captured [--dry-run]

Kafka connection and topic prefix come from the same CRM_* variables as the services. Replay
republishes each parked message, unchanged and with its original key, to the topic it came
from; the replayer's consumer group remembers how far it got, so a second replay only sends
what was parked since. Consumers are idempotent, so a replayed event that had meanwhile been
applied changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from .dead_letters import H_TOPIC, dlq_topic, original_headers
from .kafka import aiokafka_options
from .settings import ServiceSettings

REPLAY_GROUP = "crm-dlq-replayer"


class DlqSettings(ServiceSettings):
    service_name: str = "dlq"


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    consumer._client.add_topic(topic)  # aiokafka offers no public per-topic metadata refresh
    await consumer._client.force_metadata_update()
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]


async def read_dead_letters(
    settings: ServiceSettings, topic: str, *, group: str | None, limit: int | None
) -> tuple[AIOKafkaConsumer, list[Any]]:
    """Read what is parked on ``topic``'s dead-letter topic (from the group's position, or
    from the start when ``group`` is None) up to its current end."""
    consumer = AIOKafkaConsumer(
        group_id=group, enable_auto_commit=False, auto_offset_reset="earliest", **aiokafka_options(settings)
    )
    await consumer.start()
    parked = settings.topic(dlq_topic(topic))
    partitions = await _partitions(consumer, parked)
    if not partitions:
        return consumer, []
    consumer.assign(partitions)
    if group is None:
        await consumer.seek_to_beginning()
    end = await consumer.end_offsets(partitions)
    records: list[Any] = []
    while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
        if limit is not None and len(records) >= limit:
            break
        batch = await consumer.getmany(timeout_ms=500)
        for messages in batch.values():
            records.extend(messages)
    return consumer, records[:limit] if limit is not None else records


def _describe(record: Any) -> dict[str, Any]:
    headers = {k: v.decode(errors="replace") for k, v in record.headers or ()}
    return {
        "dlq_offset": record.offset,
        "partition": record.partition,
        "key": record.key.decode(errors="replace") if record.key else None,
        "headers": headers,
        "payload": (record.value or b"")[:2000].decode(errors="replace"),
    }


async def list_command(settings: ServiceSettings, topic: str, limit: int) -> int:
    consumer, records = await read_dead_letters(settings, topic, group=None, limit=limit)
    await consumer.stop()
    for record in records:
        print(json.dumps(_describe(record)))
    print(f"{len(records)} dead letter(s) on {settings.topic(dlq_topic(topic))}", file=sys.stderr)
    return 0


async def replay_command(settings: ServiceSettings, topic: str, dry_run: bool) -> int:
    consumer, records = await read_dead_letters(
        settings, topic, group=settings.topic(REPLAY_GROUP), limit=None
    )
    producer = AIOKafkaProducer(enable_idempotence=True, acks="all", **aiokafka_options(settings))
    await producer.start()
    try:
        for record in records:
            headers = dict(record.headers or ())
            target = headers.get(H_TOPIC, settings.topic(topic).encode()).decode()
            if not dry_run:
                await producer.send_and_wait(
                    target,
                    record.value,
                    key=record.key,
                    headers=[
                        *original_headers(record.headers or ()),
                        ("crm-replayed-from", f"{record.topic}:{record.partition}:{record.offset}".encode()),
                    ],
                )
            print(json.dumps({"replayed_to": target, **_describe(record)}))
        if records and not dry_run:
            await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()
    print(f"{'would replay' if dry_run else 'replayed'} {len(records)} message(s)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crm-dlq", description="Inspect and replay dead letters.")
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="print parked messages with their error and origin")
    listing.add_argument("topic", help="the original topic, e.g. lead.captured")
    listing.add_argument("--limit", type=int, default=100)
    replay = sub.add_parser("replay", help="republish parked messages to their original topic")
    replay.add_argument("topic")
    replay.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    settings = DlqSettings()
    if args.command == "list":
        return asyncio.run(list_command(settings, args.topic, args.limit))
    return asyncio.run(replay_command(settings, args.topic, args.dry_run))


if __name__ == "__main__":
    raise SystemExit(main())
