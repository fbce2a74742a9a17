"""deploy/: a real Prometheus scrapes the service with the repository's config and rules; promtool
validates them; the dashboard and the alerts name only metrics the service exports (and the
dashboard shows every one); the Kubernetes manifests pass a schema validator; the compose file
is consistent with the Dockerfile and the repository."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes_validate import validate as kubernetes_validate
from kubernetes_validate.utils import ValidationError

from argus.servers import free_port
from service.settings import EncoderSettings, Settings, StoreSettings
from tests.conftest import serving

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
METRIC = re.compile(r"\bargus_[a-z_]+")
SUFFIXES = ("_bucket", "_sum", "_count")


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: run scripts/install.sh (apt-get prometheus)"
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True)


def test_promtool_validates_the_config_and_the_alert_rules(tmp_path: Path) -> None:
    checked = promtool("check", "config", PROMETHEUS / "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = promtool("check", "rules", PROMETHEUS / "alerts.yml")
    assert rules.returncode == 0 and f"{len(alert_expressions())} rules found" in rules.stdout, (
        rules.stdout + rules.stderr
    )
    broken = tmp_path / "alerts.yml"  # the check can fail: a syntax error in one expression
    broken.write_text((PROMETHEUS / "alerts.yml").read_text().replace("> 0.01", "> > 0.01"))
    assert promtool("check", "rules", broken).returncode != 0


def base_name(series: str) -> str:
    for suffix in SUFFIXES:
        if series.endswith(suffix):
            return series.removesuffix(suffix)
    return series


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "argus.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_expressions() -> list[str]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


@pytest.fixture
def service(bundles: Path) -> Iterator[str]:
    yield from serving(
        Settings(store=StoreSettings(bundles=bundles), encoder=EncoderSettings(max_delay_ms=0))
    )


def exposed_families(url: str) -> set[str]:
    """Metric family names in ``/metrics`` (``# TYPE`` lines), after traffic on every path."""
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.post("/candidates", json={"user_id": 1, "k": 5}).status_code == 200
        history = [{"item_id": 1, "timestamp": 1_700_000_000}]
        body = {"user_id": 1, "item_ids": [1, 2], "history": history}
        assert client.post("/score", json=body).status_code == 200
        text = client.get("/metrics").text
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def test_every_metric_in_the_dashboard_and_alerts_is_exported_and_each_has_a_panel(
    service: str,
) -> None:
    exposed = {name for name in exposed_families(service) if name.startswith("argus_")}
    assert len(exposed) >= 10
    in_dashboard = {base_name(m) for e in dashboard_expressions() for m in METRIC.findall(e)}
    in_alerts = {base_name(m) for e in alert_expressions() for m in METRIC.findall(e)}
    # counters are exposed as <name>_total in the TYPE line of OpenMetrics-style clients
    known = exposed | {name.removesuffix("_total") for name in exposed}
    assert in_dashboard - known == set(), "dashboard names metrics the service does not export"
    assert in_alerts - known == set(), "alert rules name metrics the service does not export"
    missing = {name for name in exposed if name not in in_dashboard}
    assert missing == set(), f"metrics without a dashboard panel: {missing}"


def test_a_real_prometheus_scrapes_the_service_with_the_repository_config(
    service: str, tmp_path: Path
) -> None:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: run scripts/install.sh (apt-get prometheus)"
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [service.removeprefix("http://")]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        httpx.post(f"{service}/candidates", json={"user_id": 1, "k": 5}, timeout=10)
        deadline = time.monotonic() + 60
        up: list[dict] = []
        latency: list[dict] = []
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline and not (up and latency):
                time.sleep(1)
                try:
                    found = client.get(f"{api}/query", params={"query": 'up{job="argus"}'}).json()
                    up = [r for r in found["data"]["result"] if r["value"][1] == "1"]
                    query = {"query": "argus_request_duration_seconds_count"}
                    latency = client.get(f"{api}/query", params=query).json()["data"]["result"]
                except httpx.HTTPError:
                    continue
            assert up, "Prometheus never saw the service up"
            assert any(r["metric"].get("endpoint") == "/candidates" for r in latency), latency
            groups = client.get(f"{api}/rules").json()["data"]["groups"]
        assert sum(len(g["rules"]) for g in groups) == len(alert_expressions())  # all loaded
    finally:
        process.terminate()
        process.wait(timeout=20)


def manifests() -> list[Path]:
    return sorted(p for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_kubernetes_manifests_pass_the_schema_validator(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert documents
    for document in documents:
        kubernetes_validate(document, "1.30", strict=True)


def test_the_validator_rejects_a_wrong_manifest() -> None:
    deployment = next(
        d
        for d in yaml.safe_load_all((DEPLOY / "k8s" / "deployment.yaml").read_text())
        if d["kind"] == "Deployment"
    )
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = (
        "/readyz"
    )
    with pytest.raises(ValidationError):
        kubernetes_validate(deployment, "1.30", strict=True)


def k8s_objects() -> dict[tuple[str, str], dict]:
    """Every manifest's objects by (kind, name)."""
    return {
        (d["kind"], d["metadata"]["name"]): d
        for p in manifests()
        for d in yaml.safe_load_all(p.read_text())
        if d
    }


def pod_specs(objects: dict[tuple[str, str], dict]) -> dict[str, dict]:
    """The pod template of every workload, by workload name."""
    pods = {
        name: d["spec"]["template"]["spec"]
        for (kind, name), d in objects.items()
        if kind == "Deployment"
    }
    for (kind, name), d in objects.items():
        if kind == "CronJob":
            pods[name] = d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return pods


def test_kubernetes_probes_resources_and_the_daily_job() -> None:
    objects = k8s_objects()
    assert {
        ("ConfigMap", "argus"),
        ("Deployment", "argus"),
        ("Service", "argus"),
        ("HorizontalPodAutoscaler", "argus"),
        ("PodDisruptionBudget", "argus"),
        ("CronJob", "argus-daily"),
        ("Deployment", "redis"),
        ("Service", "redis"),
        ("NetworkPolicy", "redis"),
    } <= set(objects)
    container = objects["Deployment", "argus"]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    job = pod_specs(objects)["argus-daily"]["containers"][0]
    assert job["command"] == ["scripts/daily.sh"] and (ROOT / "scripts" / "daily.sh").is_file()
    settings = set(objects["ConfigMap", "argus"]["data"])
    known = set(Settings.environment())
    daily = {"ARGUS_CHECKPOINT", "ARGUS_DATA", "ARGUS_EXPORTS"}  # scripts/daily.sh's own
    assert settings - known - daily == set(), "ConfigMap sets variables nothing reads"


def secret_refs(container: dict) -> dict[str, str]:
    """Environment variable -> key of the Secret `argus` it is read from (a required one)."""
    refs = {}
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            assert ref["name"] == "argus" and not ref.get("optional", False), variable
            refs[variable["name"]] = ref["key"]
    return refs


def test_kubernetes_pods_are_locked_down_and_only_argus_reaches_a_password_protected_redis() -> (
    None
):
    objects = k8s_objects()
    pods = pod_specs(objects)
    assert set(pods) == {"argus", "argus-daily", "redis"}
    for name, pod in pods.items():
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name
    service, daily, redis_pod = (
        pods[n]["containers"][0] for n in ("argus", "argus-daily", "redis")
    )
    assert secret_refs(service) == {
        "ARGUS_EVENTS_TOKEN": "events-token",
        "ARGUS_REDIS_PASSWORD": "redis-password",
    }
    assert secret_refs(daily) == {"ARGUS_REDIS_PASSWORD": "redis-password"}
    assert secret_refs(redis_pod)["REDIS_PASSWORD"] == "redis-password"
    assert redis_pod["args"][:3] == ["redis-server", "--requirepass", "$(REDIS_PASSWORD)"]
    # Redis takes connections from the service's and the daily job's pods only, on its port.
    policy = objects["NetworkPolicy", "redis"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "redis"}
    assert policy["policyTypes"] == ["Ingress"] and len(policy["ingress"]) == 1
    (rule,) = policy["ingress"]
    allowed = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]
    }
    assert allowed == {"argus", "argus-daily"}
    assert all(set(peer) == {"podSelector"} for peer in rule["from"])  # no namespace/IP peers
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    labels = {
        name: objects[kind, name]["spec"]["template"]["metadata"]["labels"]
        if kind == "Deployment"
        else objects[kind, name]["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        for kind, name in (("Deployment", "argus"), ("CronJob", "argus-daily"))
    }
    assert {v["app.kubernetes.io/name"] for v in labels.values()} == allowed
    kustomized = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert {p.name for p in manifests()} == set(kustomized["resources"])


def test_compose_matches_the_dockerfile_and_the_repository() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "offline", "argus", "prometheus", "grafana"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name in ("offline", "argus"):
        build = services[name]["build"]
        assert (DEPLOY / build["context"] / "Dockerfile").is_file()
        assert re.search(rf"^FROM \S+ AS {build['target']}$", dockerfile, re.M), build
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"compose mounts missing {source}"
            else:
                assert source in compose["volumes"], f"undeclared volume {source}"
    environment = services["argus"]["environment"]
    assert environment["ARGUS_REDIS_URL"].startswith("redis://redis:")
    assert "argus:8000" in (PROMETHEUS / "prometheus.yml").read_text()


def test_compose_ships_secrets_a_redis_password_and_loopback_only_dashboards() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services, secrets = compose["services"], compose["secrets"]
    # secrets come from the environment, never from the file itself
    assert secrets == {
        "argus_redis_password": {"environment": "ARGUS_REDIS_PASSWORD"},
        "argus_events_token": {"environment": "ARGUS_EVENTS_TOKEN"},
    }
    # mounted as /run/secrets/<name>: the names the service's settings read there
    assert set(services["argus"]["secrets"]) == {"argus_redis_password", "argus_events_token"}
    assert services["offline"]["secrets"] == ["argus_redis_password"]  # argus publish
    environment = Settings.environment()
    for name in secrets:
        assert name.upper() in environment, f"no setting reads the secret {name}"
    redis_command = " ".join(services["redis"]["command"])
    assert "--requirepass" in redis_command and "/run/secrets/argus_redis_password" in redis_command
    assert "REDISCLI_AUTH" in " ".join(services["redis"]["healthcheck"]["test"])
    for name in ("argus", "offline", "redis"):
        text = yaml.safe_dump(services[name])
        assert "TOKEN:" not in text and "PASSWORD:" not in text, f"{name}: a secret in plain env"
    for name in ("prometheus", "grafana"):
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"]), name
    assert "ports" not in services["redis"]  # Redis is reachable on the compose network only
    password = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password


def test_the_images_install_with_the_script_the_tests_use() -> None:
    """The Docker image cannot be built here (no Docker engine); its install steps are the
    script that `make test` runs, so the tests cover them."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = re.findall(r"^RUN (.*install.*)$", dockerfile, re.M)
    assert installs == ["scripts/install.sh serve", "scripts/install.sh train,serve"]
    assert "scripts/install.sh" in (ROOT / "Makefile").read_text()
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", dockerfile, re.M)
    assert re.search(r"^USER argus$", dockerfile, re.M)
