"""The chart's alert rules evaluated on sample series from several replicas, so a rule that
counts a figure once per pod (the group's lag, which every replica reports) fails here.

promtool is not available offline, so a tiny evaluator below reads the rules' subset of PromQL:
instant vectors of ``sum|max|min by (labels) (...)`` over a selector with ``=`` and ``=~``
matchers, and a trailing ``> N``. Anything else is refused, so a rule it cannot read fails its
test instead of passing unchecked."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import yaml

Labels = frozenset[tuple[str, str]]
Vector = dict[Labels, float]

_AGGREGATIONS: dict[str, Callable[[list[float]], float]] = {"sum": sum, "max": max, "min": min}
_AGG = re.compile(r"^(sum|max|min) by \(([^)]*)\) \((.*)\)$", re.S)
_SELECTOR = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}$", re.S)
_MATCHER = re.compile(r'\s*([a-zA-Z_]+)\s*(=~|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
_COMPARISON = re.compile(r"^(.*\S)\s*>\s*([0-9.]+)$", re.S)


def evaluate(expr: str, series: list[tuple[Mapping[str, str], float]]) -> Vector:
    expr = expr.strip()
    comparison = _COMPARISON.match(expr)
    if comparison and _balanced(comparison.group(1)):
        threshold = float(comparison.group(2))
        return {k: v for k, v in evaluate(comparison.group(1), series).items() if v > threshold}
    aggregation = _AGG.match(expr)
    if aggregation and _balanced(aggregation.group(3)):
        by = [label.strip() for label in aggregation.group(2).split(",") if label.strip()]
        groups: dict[Labels, list[float]] = {}
        for labels, value in evaluate(aggregation.group(3), series).items():
            kept = dict(labels)
            key = frozenset((name, kept[name]) for name in by if name in kept)
            groups.setdefault(key, []).append(value)
        return {key: _AGGREGATIONS[aggregation.group(1)](values) for key, values in groups.items()}
    selector = _SELECTOR.match(expr)
    if selector:
        name, body = selector.groups()
        matchers = _MATCHER.findall(body)
        if "".join(m.group(0) for m in _MATCHER.finditer(body)).strip() != body.strip():
            raise ValueError(f"unsupported matchers: {body}")
        return {
            frozenset(labels.items()): value
            for labels, value in series
            if labels.get("__name__") == name
            and all(_matches(labels.get(k, ""), op, v) for k, op, v in matchers)
        }
    raise ValueError(f"unsupported PromQL: {expr}")


def _matches(actual: str, op: str, expected: str) -> bool:
    expected = expected.replace('\\"', '"')
    return actual == expected if op == "=" else re.fullmatch(expected, actual) is not None


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


RELEASE = "crm"
LEADS = f"{RELEASE}-leads"
THRESHOLD = 10_000


@pytest.fixture(scope="module")
def lag_rule(helm_bin: Path, repo_root: Path) -> str:
    result = subprocess.run(
        [
            str(helm_bin), "template", RELEASE, str(repo_root / "deploy" / "helm" / "crm"),
            "--namespace", "crm", "--set", "metrics.prometheusRule.enabled=true",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (rule,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "PrometheusRule"]
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    expr: str = alerts["CrmConsumerLagHigh"]["expr"]
    return expr


def lag(pod: str, topic: str, value: float, service: str = LEADS) -> tuple[dict[str, str], float]:
    labels = {
        "__name__": "crm_consumer_lag",
        "namespace": "crm",
        "service": service,
        "pod": pod,
        "consumergroup": f"crm-{service.removeprefix(RELEASE + '-')}",
        "topic": topic,
    }
    return labels, value


def fired(expr: str, series: list[tuple[dict[str, str], float]]) -> dict[str, float]:
    return {dict(labels)["service"]: value for labels, value in evaluate(expr, series).items()}


def test_the_evaluator_reads_sums_and_maxima_over_pods() -> None:
    series = [lag("a", "lead.captured", 6000), lag("b", "lead.captured", 6000)]
    summed = evaluate('sum by (service) (crm_consumer_lag{namespace="crm"})', series)
    assert list(summed.values()) == [12_000]
    assert list(evaluate("max by (service) (crm_consumer_lag{})", series).values()) == [6000]
    with pytest.raises(ValueError, match="unsupported"):
        evaluate("rate(crm_consumer_lag[5m])", series)


def test_two_replicas_reporting_the_group_lag_count_it_once(lag_rule: str) -> None:
    # Each of two replicas reports the group's 6,000: the group is 6,000 behind, not 12,000.
    two_replicas = [lag("a", "lead.captured", 6000), lag("b", "lead.captured", 6000)]
    assert fired(lag_rule, two_replicas) == {}
    assert fired(lag_rule, two_replicas[:1]) == {}


def test_the_lag_alert_adds_the_topics_up_and_fires_above_the_threshold(lag_rule: str) -> None:
    series = [
        lag(pod, topic, value)
        for pod in ("a", "b")
        for topic, value in (("lead.captured", 6000), ("lead.disqualified", 5000))
    ]
    assert fired(lag_rule, series) == {LEADS: 11_000}
    # Pods measure a few seconds apart: the freshest (highest) figure counts, still once.
    assert fired(lag_rule, [lag("a", "lead.captured", 10_001), lag("b", "lead.captured", 9000)]) == {
        LEADS: 10_001
    }


def test_the_lag_alert_keeps_services_and_namespaces_apart(lag_rule: str) -> None:
    other_service = lag("c", "lead.captured", 6000, service=f"{RELEASE}-reporting")
    labels, value = lag("d", "lead.captured", 50_000)
    other_namespace = (labels | {"namespace": "staging"}, value)
    series = [lag("a", "lead.captured", 6000), other_service, other_namespace]
    assert fired(lag_rule, series) == {}
