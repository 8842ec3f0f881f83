"""The Helm chart deploy/helm/crm, rendered offline by a real `helm template`.

Every rendered manifest is validated against the Kubernetes JSON schemas shipped by
kubernetes-validate (strict: unknown fields fail), for the oldest Kubernetes the chart supports
and the newest the package knows; then the manifests are checked for what the design requires.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

SERVICES = ("leads", "opportunities", "campaigns", "reporting")
SECRET_ENV = {"CRM_MONGO_URL", "CRM_API_TOKENS", "CRM_KAFKA_SASL_PASSWORD"}
MIN_KUBE_VERSION = "1.27.0"  # Chart.yaml kubeVersion
KUBE_VERSIONS = (MIN_KUBE_VERSION, kubernetes_validate.latest_version())
# Kinds from CRDs, which kubernetes-validate has no schema for; checked semantically below.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
RELEASE = "crm"

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]

# The first test to need helm may build it (about 2 minutes cold).
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="session")
def chart(repo_root: Path) -> Path:
    return repo_root / "deploy" / "helm" / "crm"


def helm(helm_bin: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm_bin), *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="session")
def render(helm_bin: Path, chart: Path) -> Render:
    def _render(*args: str) -> list[Manifest]:
        result = helm(
            helm_bin, "template", RELEASE, str(chart), "--namespace", "crm",
            "--kube-version", MIN_KUBE_VERSION, *args,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return _render


@pytest.fixture(scope="session")
def default_manifests(render: Render) -> list[Manifest]:
    return render()


@pytest.fixture(scope="session")
def full_manifests(render: Render, chart: Path) -> list[Manifest]:
    return render("-f", str(chart / "ci" / "full-values.yaml"))


@pytest.fixture(scope="session", params=["default", "full"])
def manifests(
    request: pytest.FixtureRequest,
    default_manifests: list[Manifest],
    full_manifests: list[Manifest],
) -> list[Manifest]:
    return default_manifests if request.param == "default" else full_manifests


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]


def one(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    (found,) = find(manifests, kind, name)
    return found


def containers(manifests: list[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    for deployment in find(manifests, "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            yield deployment, container


@pytest.mark.parametrize("values", ["default", "full"])
def test_helm_lint_passes_strictly(helm_bin: Path, chart: Path, values: str) -> None:
    extra = [] if values == "default" else ["-f", str(chart / "ci" / "full-values.yaml")]
    result = helm(helm_bin, "lint", "--strict", "--kube-version", MIN_KUBE_VERSION, str(chart), *extra)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(
    manifests: list[Manifest], kube_version: str
) -> None:
    errors = []
    for manifest in manifests:
        if manifest["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(manifest, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            errors.append(f"{manifest['kind']}/{manifest['metadata']['name']} {path}: {error}")
    assert errors == []


def test_a_malformed_manifest_fails_schema_validation(default_manifests: list[Manifest]) -> None:
    deployment = one(default_manifests, "Deployment", "crm-leads")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, MIN_KUBE_VERSION, strict=True)


def test_each_service_gets_its_workload_objects(default_manifests: list[Manifest]) -> None:
    for kind in ("Deployment", "Service", "ConfigMap", "PodDisruptionBudget"):
        names = sorted(m["metadata"]["name"] for m in find(default_manifests, kind))
        assert names == sorted(f"{RELEASE}-{s}" for s in SERVICES), kind
    assert len(find(default_manifests, "ServiceAccount")) == 1
    # Off by default.
    assert find(default_manifests, "HorizontalPodAutoscaler") == []
    assert find(default_manifests, "ServiceMonitor") == []
    assert find(default_manifests, "PrometheusRule") == []


def test_a_disabled_service_renders_nothing(render: Render) -> None:
    manifests = render("--set", "services.campaigns.enabled=false")
    components = {m["metadata"]["labels"].get("app.kubernetes.io/component") for m in manifests}
    assert "campaigns" not in components
    assert {"leads", "opportunities", "reporting"} <= components


def test_resources_carry_the_standard_labels(manifests: list[Manifest]) -> None:
    for manifest in manifests:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "crm"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "crm"


def test_probes_use_the_health_endpoints(manifests: list[Manifest]) -> None:
    for _, container in containers(manifests):
        assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
        paths = {
            probe: container[probe]["httpGet"]["path"]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe")
        }
        assert paths == {
            "startupProbe": "/health/live",
            "livenessProbe": "/health/live",
            "readinessProbe": "/health/ready",
        }
        assert container["resources"]["requests"] and container["resources"]["limits"]


def test_containers_run_non_root_on_a_read_only_root_filesystem(
    manifests: list[Manifest],
) -> None:
    for deployment, container in containers(manifests):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == 10001
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
        assert "emptyDir" in volume


def test_shutdown_drains_before_the_grace_period_ends(manifests: list[Manifest]) -> None:
    for deployment, container in containers(manifests):
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        # Room left after the sleep for uvicorn to finish requests and leave the group.
        assert grace - int(command[1]) >= 30


def test_replicas_spread_over_zones_and_nodes(manifests: list[Manifest]) -> None:
    for deployment in find(manifests, "Deployment"):
        pod = deployment["spec"]["template"]
        constraints = pod["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in constraints} == {
            "topology.kubernetes.io/zone",
            "kubernetes.io/hostname",
        }
        for constraint in constraints:
            selector = constraint["labelSelector"]["matchLabels"]
            assert selector.items() <= pod["metadata"]["labels"].items()


def test_services_and_disruption_budgets_select_their_own_pods(
    manifests: list[Manifest],
) -> None:
    for deployment in find(manifests, "Deployment"):
        name = deployment["metadata"]["name"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        service = one(manifests, "Service", name)
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["ports"][0]["targetPort"] == "http"
        pdb = one(manifests, "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])
        other = [d for d in find(manifests, "Deployment") if d is not deployment]
        for sibling in other:
            sibling_labels = sibling["spec"]["template"]["metadata"]["labels"]
            assert not service["spec"]["selector"].items() <= sibling_labels.items()


def test_no_secret_value_is_rendered(manifests: list[Manifest]) -> None:
    assert find(manifests, "Secret") == []
    for config_map in find(manifests, "ConfigMap"):
        assert not SECRET_ENV & set(config_map["data"])
        assert not any("mongodb://" in value for value in config_map["data"].values())
    for _, container in containers(manifests):
        for variable in container["env"]:
            if variable["name"] in SECRET_ENV:
                assert "value" not in variable
                assert variable["valueFrom"]["secretKeyRef"]["key"] == variable["name"]


def test_service_configuration_comes_from_its_config_map(
    default_manifests: list[Manifest],
) -> None:
    for service in SERVICES:
        name = f"{RELEASE}-{service}"
        data = one(default_manifests, "ConfigMap", name)["data"]
        assert data["CRM_MONGO_DATABASE"] == f"crm_{service}"
        assert data["OTEL_SERVICE_NAME"] == f"crm-{service}"
        assert data["CRM_HTTP_PORT"] == "8000"
        (container,) = one(default_manifests, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        assert container["envFrom"] == [{"configMapRef": {"name": name}}]


TOPIC_ENV = {
    "CRM_KAFKA_CREATE_TOPICS": "true",
    "CRM_KAFKA_TOPIC_PARTITIONS": "3",
    "CRM_KAFKA_REPLICATION_FACTOR": "3",
    "CRM_KAFKA_MIN_INSYNC_REPLICAS": "2",
    "CRM_KAFKA_TOPIC_RETENTION_MS": "-1",
    "CRM_KAFKA_DLQ_RETENTION_MS": "2592000000",
}


def test_topics_are_created_durable_by_default_and_configurable(render: Render) -> None:
    from crm_runtime import ServiceSettings
    from crm_runtime.topics import requirement

    for service in SERVICES:
        data = one(render(), "ConfigMap", f"{RELEASE}-{service}")["data"]
        assert {k: data.get(k) for k in TOPIC_ENV} == TOPIC_ENV
        # The service reads them as it would from its environment.
        env = {k.removeprefix("CRM_").lower(): data[k] for k in TOPIC_ENV}
        settings = ServiceSettings(service_name=service, **env)
        assert requirement(settings, "lead.captured").configs["min.insync.replicas"] == "2"
        assert requirement(settings, "lead.captured").configs["retention.ms"] == "-1"
        assert requirement(settings, "lead.captured.dlq").configs["retention.ms"] == "2592000000"
    custom = render(
        "--set", "kafka.topics.replicationFactor=5", "--set", "kafka.topics.minInsyncReplicas=3",
        "--set", "kafka.topics.retentionMs=604800000", "--set", "kafka.topics.create=false",
    )  # fmt: skip
    data = one(custom, "ConfigMap", f"{RELEASE}-leads")["data"]
    assert data["CRM_KAFKA_REPLICATION_FACTOR"] == "5" and data["CRM_KAFKA_MIN_INSYNC_REPLICAS"] == "3"
    assert data["CRM_KAFKA_TOPIC_RETENTION_MS"] == "604800000" and data["CRM_KAFKA_CREATE_TOPICS"] == "false"


def test_min_insync_replicas_above_the_replication_factor_fails_the_render(
    helm_bin: Path, chart: Path
) -> None:
    result = helm(
        helm_bin, "template", RELEASE, str(chart),
        "--set", "kafka.topics.replicationFactor=2", "--set", "kafka.topics.minInsyncReplicas=3",
    )  # fmt: skip
    assert result.returncode != 0
    assert "minInsyncReplicas cannot exceed" in result.stderr


def test_every_service_gets_the_one_company_currency(render: Render, full_manifests: list[Manifest]) -> None:
    for manifests, currency in ((render(), "EUR"), (full_manifests, "USD")):
        config = {m["metadata"]["name"]: m["data"] for m in find(manifests, "ConfigMap")}
        assert {config[f"{RELEASE}-{s}"]["CRM_COMPANY_CURRENCY"] for s in SERVICES} == {currency}


def test_a_config_change_rolls_only_the_affected_service(render: Render) -> None:
    def checksums(*args: str) -> dict[str, str]:
        return {
            d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for d in find(render(*args), "Deployment")
        }

    before = checksums()
    after = checksums("--set", "services.leads.env.CRM_LOG_LEVEL=DEBUG")
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {f"{RELEASE}-leads"}


def test_kafka_sasl_and_tls_are_wired_from_secrets(full_manifests: list[Manifest]) -> None:
    deployment = one(full_manifests, "Deployment", f"{RELEASE}-opportunities")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {v["name"]: v for v in container["env"]}
    password = env["CRM_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password["name"] == "crm-opportunities-secrets"  # per-service override
    data = one(full_manifests, "ConfigMap", f"{RELEASE}-opportunities")["data"]
    assert data["CRM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert data["CRM_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "kafka-ca")
    assert data["CRM_KAFKA_SSL_CAFILE"].startswith(mount["mountPath"] + "/")
    (ca,) = [v for v in pod["volumes"] if v["name"] == "kafka-ca"]
    assert ca["secret"]["secretName"] == "kafka-cluster-ca"


def test_autoscaling_on_cpu_and_kafka_consumer_lag(full_manifests: list[Manifest]) -> None:
    hpas = {h["metadata"]["name"]: h for h in find(full_manifests, "HorizontalPodAutoscaler")}
    # reporting opts out in ci/full-values.yaml, overriding defaults.autoscaling.enabled=true.
    assert set(hpas) == {f"{RELEASE}-{s}" for s in ("leads", "opportunities", "campaigns")}
    assert one(full_manifests, "Deployment", f"{RELEASE}-reporting")["spec"]["replicas"] == 1
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        # The HPA owns the replica count.
        assert "replicas" not in one(full_manifests, "Deployment", name)["spec"]
        metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
        lag = metrics["External"]["external"]
        assert lag["metric"]["name"] == "kafka_consumergroup_lag"
        service = name.removeprefix(f"{RELEASE}-")
        assert lag["metric"]["selector"]["matchLabels"] == {"consumergroup": f"crm-{service}"}
        assert lag["target"]["type"] == "AverageValue"
    assert "Resource" in {m["type"] for m in hpas[f"{RELEASE}-leads"]["spec"]["metrics"]}
    # campaigns turns CPU off: lag only.
    assert [m["type"] for m in hpas[f"{RELEASE}-campaigns"]["spec"]["metrics"]] == ["External"]


def test_autoscaling_needs_a_metric(helm_bin: Path, chart: Path) -> None:
    result = helm(
        helm_bin, "template", RELEASE, str(chart),
        "--set", "defaults.autoscaling.enabled=true",
        "--set", "defaults.autoscaling.targetCPUUtilizationPercentage=0",
    )  # fmt: skip
    assert result.returncode != 0
    assert "enable at least one metric" in result.stderr


def test_service_monitors_scrape_each_service(full_manifests: list[Manifest]) -> None:
    monitors = find(full_manifests, "ServiceMonitor")
    assert len(monitors) == len(SERVICES)
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        service = one(full_manifests, "Service", monitor["metadata"]["name"])
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= service["metadata"]["labels"].items()
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def exported_metrics(registry: Any) -> set[str]:
    exported: set[str] = set()
    for family in registry.collect():
        # A labelled metric has no samples until used: go by the family (counters add _total).
        exported |= {family.name, f"{family.name}_total"} if family.type == "counter" else {family.name}
        if family.type == "histogram":
            exported |= {f"{family.name}_{part}" for part in ("bucket", "count", "sum")}
    return exported


REPORTING_ALERTS = {"CrmReportingMergerStalled", "CrmReportingDeltasSetAside"}


def test_alerts_watch_each_service_on_metrics_the_runtime_exports(full_manifests: list[Manifest]) -> None:
    from crm_reporting.bootstrap import ReportingSettings, create_app
    from crm_runtime import ServiceRuntime, ServiceSettings

    (rule,) = find(full_manifests, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (group,) = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert set(alerts) == {
        "CrmServiceDown",
        "CrmConsumerLagHigh",
        "CrmEventsDeadLettered",
        "CrmOutboxBacklog",
        "CrmKafkaUnreachable",
        "CrmHttpErrorRateHigh",
        "CrmHttpLatencyHigh",
        *REPORTING_ALERTS,
    }
    # What every service's app exports (readiness checks register with the app).
    runtime = ServiceRuntime(ServiceSettings(service_name="probe"))
    runtime.create_app(title="probe", description="probe")
    exported = exported_metrics(runtime.registry)
    # Reporting's own metrics (its merger) are on its runtime's registry.
    reporting = exported_metrics(create_app(ReportingSettings()).state.runtime.registry)
    services = "|".join(f"{RELEASE}-{s}" for s in sorted(SERVICES))
    for name, alert in alerts.items():
        expr = alert["expr"]
        if name in REPORTING_ALERTS:
            assert f'namespace="crm", service="{RELEASE}-reporting"' in expr, name
        else:
            assert f'namespace="crm", service=~"{services}"' in expr, name
        used = set(re.findall(r"\b(crm_[a-z_]+)\{", expr))
        assert used <= (reporting if name in REPORTING_ALERTS else exported), (name, used - exported)
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert "{{ $labels.service }}" in alert["annotations"]["summary"]
    assert alerts["CrmConsumerLagHigh"]["for"] == "10m"
    assert alerts["CrmConsumerLagHigh"]["expr"].endswith("> 10000")
    assert "> 300)" in alerts["CrmReportingMergerStalled"]["expr"]
    assert alerts["CrmReportingMergerStalled"]["for"] == "10m"
    # Errors are the 5xx share of all requests; latency leaves streamed uploads out.
    errors = alerts["CrmHttpErrorRateHigh"]
    assert 'status=~"5.."' in errors["expr"] and errors["expr"].endswith("> 0.05") and errors["for"] == "5m"
    latency = alerts["CrmHttpLatencyHigh"]["expr"]
    assert latency.startswith("histogram_quantile(0.99, ") and latency.endswith("> 1")
    assert 'handler!~"/imports/[a-z_]+"' in latency
    assert 'check="kafka"} == 0' in alerts["CrmKafkaUnreachable"]["expr"]


def test_reporting_alerts_go_with_the_reporting_service(render: Render) -> None:
    manifests = render(
        "--set", "metrics.prometheusRule.enabled=true", "--set", "services.reporting.enabled=false",
    )  # fmt: skip
    (rule,) = find(manifests, "PrometheusRule")
    names = {r["alert"] for r in rule["spec"]["groups"][0]["rules"]}
    assert names and not names & REPORTING_ALERTS


def test_pods_carry_prometheus_scrape_annotations(default_manifests: list[Manifest]) -> None:
    for deployment in find(default_manifests, "Deployment"):
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == "8000"
        assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize(
    ("setting", "reported"),
    [
        ("defaults.replicaCount=-1", "/defaults/replicaCount"),
        ("services.leads.replicaCount=-1", "/services/leads/replicaCount"),
        ("services.leads.env.CRM_MONGO_URL=mongodb://u:p@db", "CRM_MONGO_URL"),
        ("companyCurrency=usd", "/companyCurrency"),
        ("services.leads.env.CRM_COMPANY_CURRENCY=USD", "CRM_COMPANY_CURRENCY"),
        ("services.billing.enabled=true", "billing"),
        ("kafka.securityProtocol=TLS", "/kafka/securityProtocol"),
        ("defaults.autoscaling.targetCPUUtilizationPercentage=150", "targetCPUUtilization"),
        ("defaults.replicas=3", "replicas"),
        ("kafka.topics.retentionMs=-2", "/kafka/topics/retentionMs"),
        ("kafka.topics.replicationFactor=0", "/kafka/topics/replicationFactor"),
    ],
)
def test_values_schema_rejects_bad_values(helm_bin: Path, chart: Path, setting: str, reported: str) -> None:
    result = helm(helm_bin, "template", RELEASE, str(chart), "--set", setting)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert reported in result.stderr


def test_the_grafana_dashboard_is_a_configmap_for_grafanas_sidecar(
    default_manifests: list[Manifest], full_manifests: list[Manifest], chart: Path
) -> None:
    assert find(default_manifests, "ConfigMap", f"{RELEASE}-dashboard") == []
    dashboard = one(full_manifests, "ConfigMap", f"{RELEASE}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "CRM"}
    shipped = (chart / "dashboards" / "crm.json").read_text()
    assert json.loads(dashboard["data"]["crm.json"]) == json.loads(shipped)
