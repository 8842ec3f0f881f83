"""What a topic must offer the service, and how a shortfall is reported (no Kafka needed)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from crm_runtime import ServiceSettings
from crm_runtime.dead_letters import (
    OTHER_SOURCES,
    UNPARSEABLE,
    SourceLabels,
    original_headers,
    publisher_headers,
)
from crm_runtime.topics import ObservedTopic, TopicCheck, compare, requirement
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

THIRTY_DAYS_MS = 30 * 24 * 3600 * 1000
KEEPS_EVERYTHING = {
    "cleanup.policy": "delete",
    "retention.ms": "-1",
    "retention.bytes": "-1",
    "min.insync.replicas": "2",
}


def production() -> ServiceSettings:
    return ServiceSettings(
        service_name="probe", kafka_replication_factor=3, kafka_min_insync_replicas=2, topic_prefix="p."
    )


def test_event_topics_keep_every_event_and_dead_letters_thirty_days_by_default() -> None:
    settings = ServiceSettings(service_name="probe")
    event = requirement(settings, "lead.captured")
    dlq = requirement(settings, "lead.captured.dlq")
    assert event.configs == {
        "cleanup.policy": "delete",
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "min.insync.replicas": "1",
    }
    assert (event.replication_factor, event.partitions) == (1, 3)
    assert dlq.configs["retention.ms"] == str(THIRTY_DAYS_MS)


def test_topic_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_KAFKA_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("CRM_KAFKA_MIN_INSYNC_REPLICAS", "2")
    monkeypatch.setenv("CRM_KAFKA_TOPIC_RETENTION_MS", "604800000")
    monkeypatch.setenv("CRM_KAFKA_DLQ_RETENTION_MS", "-1")
    settings = ServiceSettings(service_name="probe")
    assert requirement(settings, "deal.won").configs["retention.ms"] == "604800000"
    assert requirement(settings, "deal.won.dlq").configs["retention.ms"] == "-1"
    assert requirement(settings, "deal.won").configs["min.insync.replicas"] == "2"
    assert requirement(settings, "deal.won").replication_factor == 3


def test_min_insync_replicas_above_the_replication_factor_is_refused() -> None:
    with pytest.raises(ValidationError, match="CRM_KAFKA_MIN_INSYNC_REPLICAS"):
        ServiceSettings(service_name="probe", kafka_replication_factor=1, kafka_min_insync_replicas=2)


def test_a_topic_that_offers_what_is_needed_or_more_has_no_mismatch() -> None:
    needed = requirement(production(), "lead.captured")
    assert compare(needed, ObservedTopic(3, 3, KEEPS_EVERYTHING)) == []
    assert compare(needed, ObservedTopic(12, 5, KEEPS_EVERYTHING | {"min.insync.replicas": "3"})) == []


def test_each_shortfall_is_named_with_the_actual_and_expected_value() -> None:
    needed = requirement(production(), "lead.captured")
    observed = ObservedTopic(
        1,
        1,
        {
            "cleanup.policy": "compact",
            "retention.ms": "86400000",
            "retention.bytes": "1073741824",
            "min.insync.replicas": "1",
        },
    )
    found = {m.setting: (m.actual, m.expected) for m in compare(needed, observed)}
    assert found == {
        "partitions": ("1", "at least 3"),
        "replication.factor": ("1", "at least 3"),
        "min.insync.replicas": ("1", "at least 2"),
        "retention.ms": ("86400000", "-1 (keep every event)"),
        "retention.bytes": ("1073741824", "-1"),
        "cleanup.policy": ("compact", "delete"),
    }
    assert {m.topic for m in compare(needed, observed)} == {"lead.captured"}


def test_a_dead_letter_topic_may_keep_its_messages_longer_but_not_shorter() -> None:
    needed = requirement(production(), "lead.captured.dlq")
    longer = KEEPS_EVERYTHING | {"retention.ms": str(2 * THIRTY_DAYS_MS)}
    shorter = KEEPS_EVERYTHING | {"retention.ms": "604800000"}
    assert compare(needed, ObservedTopic(3, 3, KEEPS_EVERYTHING)) == []
    assert compare(needed, ObservedTopic(3, 3, longer)) == []
    (short,) = compare(needed, ObservedTopic(3, 3, shorter))
    assert (short.setting, short.actual, short.expected) == (
        "retention.ms",
        "604800000",
        f"at least {THIRTY_DAYS_MS} or -1",
    )


def test_a_missing_topic_is_a_mismatch() -> None:
    (missing,) = compare(requirement(production(), "deal.won"), None)
    assert (missing.setting, missing.actual) == ("exists", "missing")


def test_the_check_logs_each_mismatch_sets_the_gauge_and_fills_the_health_detail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    check = TopicCheck(production(), registry)
    assert asyncio.run(check.detail()) == {"status": "unknown"}
    needed = [requirement(production(), "lead.captured"), requirement(production(), "deal.won")]
    mismatches = compare(needed[0], ObservedTopic(3, 1, KEEPS_EVERYTHING))
    with caplog.at_level(logging.WARNING, logger="crm_runtime.topics"):
        check.record(needed, mismatches)
    (line,) = caplog.records
    assert (line.topic, line.setting, line.actual, line.expected) == (  # type: ignore[attr-defined]
        "lead.captured",
        "replication.factor",
        "1",
        "at least 3",
    )
    gauge = "crm_topic_config_mismatch"
    assert registry.get_sample_value(gauge, {"topic": "lead.captured", "setting": "replication.factor"}) == 1
    assert registry.get_sample_value(gauge, {"topic": "lead.captured", "setting": "retention.ms"}) == 0
    assert registry.get_sample_value(gauge, {"topic": "deal.won", "setting": "partitions"}) == 0
    detail = asyncio.run(check.detail())
    assert detail["status"] == "mismatch"
    assert detail["mismatches"] == [
        {"topic": "lead.captured", "setting": "replication.factor", "actual": "1", "expected": "at least 3"}
    ]
    check.record(needed, [])
    assert asyncio.run(check.detail()) == {"status": "ok", "mismatches": []}


def test_dead_letter_sources_are_the_event_source_capped_in_number() -> None:
    labels = SourceLabels(limit=2)
    assert labels.of(b'{"source": "/crm/leads", "id": "1"}') == "/crm/leads"
    assert labels.of(b"not json") == UNPARSEABLE
    assert labels.of(b'{"id": "no source"}') == UNPARSEABLE
    assert labels.of(b'["a list"]') == UNPARSEABLE
    assert labels.of(b'{"source": "/partner/a"}') == "/partner/a"
    assert labels.of(b'{"source": "/partner/b"}') == OTHER_SOURCES
    assert labels.of(b'{"source": "/crm/leads"}') == "/crm/leads"


def test_publisher_headers_survive_the_dead_letter_topic_byte_for_byte() -> None:
    original = [("ce_id", b"e-1"), ("x-tenant", "Zürich".encode()), ("x-signature", b"\xff\x00\xfe")]
    as_text = publisher_headers([*original, ("crm-dlq-error", b"an earlier failure")])
    assert as_text["ce_id"] == "e-1" and as_text["x-tenant"] == "Zürich"
    assert "crm-dlq-error" not in as_text and "x-signature" not in as_text
    parked = [(k, v.encode()) for k, v in as_text.items()] + [("crm-dlq-error", b"boom")]
    assert sorted(original_headers(parked)) == sorted(original)
