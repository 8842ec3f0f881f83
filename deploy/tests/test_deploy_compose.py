"""docker-compose.yml: valid against the Compose Specification schema, and wired as designed."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

SERVICES = {"leads": 8101, "opportunities": 8102, "campaigns": 8103, "reporting": 8104}
SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"
# As vendored in check-jsonschema 0.39.0; see schemas/README.md.
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
TEST_ENV = {"CRM_API_TOKENS": "test-token"}

_VARIABLE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\})")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation: $$, ${VAR}, ${VAR:-default}, ${VAR:?error}."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        escaped, name, operator, argument = match.groups()
        if escaped:
            return "$"
        current = env.get(name)
        unset = current is None or (operator is not None and operator.startswith(":") and not current)
        if operator and operator.endswith("?") and unset:
            raise KeyError(f"{name}: {argument}")
        if operator and operator.endswith("-") and unset:
            return argument
        return current or ""

    return _VARIABLE.sub(substitute, value)


@pytest.fixture(scope="module")
def raw_compose(repo_root: Path) -> dict[str, Any]:
    loaded = yaml.safe_load((repo_root / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any]) -> dict[str, Any]:
    result = interpolate(raw_compose, TEST_ENV)
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_the_vendored_schema_is_the_recorded_upstream_copy() -> None:
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256


def test_compose_file_conforms_to_the_compose_specification(
    compose: dict[str, Any], validator: jsonschema.protocols.Validator
) -> None:
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_compose_schema_rejects_a_malformed_service(
    compose: dict[str, Any], validator: jsonschema.protocols.Validator
) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["leads"]["depends_on"] = {"kafka": {"condition": "when_ready"}}
    broken["services"]["leads"]["healtcheck"] = {}
    messages = [e.message for e in validator.iter_errors(broken)]
    assert any("when_ready" in m for m in messages)
    assert any("healtcheck" in m for m in messages)


def test_api_tokens_must_come_from_the_environment(raw_compose: dict[str, Any]) -> None:
    with pytest.raises(KeyError, match="CRM_API_TOKENS"):
        interpolate(raw_compose, {})


@pytest.mark.parametrize(("name", "host_port"), SERVICES.items())
def test_service_is_built_from_the_dockerfile_for_itself(
    compose: dict[str, Any], name: str, host_port: int
) -> None:
    service = compose["services"][name]
    assert service["build"] == {
        "context": ".",
        "dockerfile": "Dockerfile",
        "args": {"SERVICE": name},
    }
    assert service["ports"] == [f"{host_port}:8000"]


@pytest.mark.parametrize("name", SERVICES)
def test_service_runs_hardened(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    uid = int(str(service["user"]).split(":")[0])
    assert uid >= 10000
    assert service["read_only"] is True
    assert any(str(mount).split(":")[0] == "/tmp" for mount in service["tmpfs"])
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]


@pytest.mark.parametrize("name", SERVICES)
def test_service_waits_for_healthy_kafka_and_mongo_and_reports_readiness(
    compose: dict[str, Any], name: str
) -> None:
    service = compose["services"][name]
    assert service["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "mongo": {"condition": "service_healthy"},
    }
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert "http://127.0.0.1:8000/health/ready" in " ".join(test)


@pytest.mark.parametrize("name", SERVICES)
def test_service_environment_points_at_the_compose_infrastructure(compose: dict[str, Any], name: str) -> None:
    env = compose["services"][name]["environment"]
    kafka_env = compose["services"]["kafka"]["environment"]
    internal = re.search(r"INTERNAL://([^,]+)", kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    assert internal is not None
    assert env["CRM_KAFKA_BOOTSTRAP_SERVERS"] == internal.group(1)
    assert env["CRM_MONGO_URL"].startswith("mongodb://mongo:27017/")
    assert "replicaSet=rs0" in env["CRM_MONGO_URL"]
    assert env["CRM_MONGO_DATABASE"] == f"crm_{name}"
    assert env["CRM_HTTP_PORT"] == "8000"
    assert env["OTEL_SERVICE_NAME"] == f"crm-{name}"


def test_kafka_is_a_single_kraft_node_reachable_from_network_and_host(
    compose: dict[str, Any],
) -> None:
    kafka = compose["services"]["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka["image"])
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "EXTERNAL://localhost:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "9092:9092" in kafka["ports"]
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[key] == 1
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])


def test_mongo_runs_as_a_replica_set_initiated_by_its_healthcheck(
    compose: dict[str, Any],
) -> None:
    mongo = compose["services"]["mongo"]
    assert mongo["image"] == "mongo:7"
    command = mongo["command"]
    assert command[command.index("--replSet") + 1] == "rs0"
    check = " ".join(mongo["healthcheck"]["test"])
    assert "rs.initiate({_id: 'rs0'" in check
    assert "host: 'mongo:27017'" in check
    assert "isWritablePrimary" in check
