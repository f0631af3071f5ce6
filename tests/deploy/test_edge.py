"""The edge components (a Gateway API HTTPRoute, the default; an Ingress): SSE-friendly, and
X-Forwarded-For hops are trusted only where nothing but the proxy reaches the gateway's API port."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from . import kustomize_lite
from .test_manifests import KUBERNETES_VERSION

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
EDGES = ("ingress", "gateway-api")
Obj = dict[str, Any]


def render_with(tmp_path: Path, component: str, patches: list[Obj] | None = None) -> list[Obj]:
    """The base with one component (and an overlay's inline ``patches``), as an overlay would use it."""
    overlay = tmp_path / component
    overlay.mkdir(parents=True)
    spec: Obj = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "edge-test",
        # Relative, as an overlay names them (kustomize refuses absolute component paths).
        "resources": [os.path.relpath(K8S / "base", overlay)],
        "components": [os.path.relpath(K8S / "components" / component, overlay)],
    }
    if patches:
        spec["patches"] = [{"patch": yaml.safe_dump(p)} for p in patches]
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    objs = kustomize_lite.build(overlay)
    cli = ["kubectl", "kustomize"] if shutil.which("kubectl") else None
    if cli:
        out = subprocess.run([*cli, str(overlay)], capture_output=True, text=True, timeout=60, check=True).stdout
        reference = sorted((yaml.safe_load_all(out)), key=lambda o: (o["kind"], o["metadata"]["name"]))
        assert sorted(objs, key=lambda o: (o["kind"], o["metadata"]["name"])) == reference
    return objs


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    (obj,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def api_port_sources(objs: list[Obj]) -> list[Obj]:
    """The peers admitted to the gateway's API port (an empty peer list: anyone)."""
    sources: list[Obj] = []
    for policy in (o for o in objs if o["kind"] == "NetworkPolicy"):
        labels = one(objs, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        if not all(labels.get(k) == v for k, v in selector.items()):
            continue
        for rule in policy["spec"].get("ingress", []):
            if any(p["port"] in {"http", 8080} for p in rule.get("ports", [])) or not rule.get("ports"):
                sources.extend(rule.get("from") or [{}])
    return sources


def proxy_namespaces(sources: list[Obj]) -> set[str]:
    return {s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for s in sources}


@pytest.mark.parametrize("component", EDGES)
def test_forwarded_for_is_trusted_only_behind_a_closed_api_port(tmp_path: Path, component: str) -> None:
    objs = render_with(tmp_path, component)
    sources = api_port_sources(objs)
    assert sources and all(set(s) == {"namespaceSelector"} for s in sources), sources
    # One appending (Envoy) or replacing (ingress-nginx) proxy: the last entry is the client's.
    assert one(objs, "ConfigMap", "montage-config")["data"]["TRUSTED_PROXY_HOPS"] == "1"
    assert "TRUST_FORWARDED_FOR" not in one(objs, "ConfigMap", "montage-config")["data"]


def test_base_alone_does_not_trust_forwarded_for() -> None:
    objs = kustomize_lite.build(K8S / "base")
    assert one(objs, "ConfigMap", "montage-config")["data"]["TRUSTED_PROXY_HOPS"] == "0"
    assert {} in api_port_sources(objs), "without an edge component the API port is open to the load balancer"


def test_gateway_api_admits_envoy_gateways_proxies_by_default(tmp_path: Path) -> None:
    """Envoy Gateway's default mode runs every Gateway's Envoy pods in its own namespace, not the Gateway's."""
    objs = render_with(tmp_path, "gateway-api")
    assert proxy_namespaces(api_port_sources(objs)) == {"envoy-gateway-system"}
    assert one(objs, "HTTPRoute", "montage")["spec"]["parentRefs"][0]["namespace"] == "gateway-system"


def test_the_proxies_namespace_is_an_overlay_patch(tmp_path: Path) -> None:
    """Gateway-namespace mode (or Istio): an overlay names the Gateway's namespace instead."""
    policy = one(render_with(tmp_path / "a", "gateway-api"), "NetworkPolicy", "gateway-ingress")
    rule = policy["spec"]["ingress"][0]
    rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] = "gateway-system"
    patch = {"apiVersion": policy["apiVersion"], "kind": "NetworkPolicy", "metadata": {"name": "gateway-ingress"}}
    patch["spec"] = {"ingress": policy["spec"]["ingress"]}
    objs = render_with(tmp_path / "b", "gateway-api", [patch])
    assert proxy_namespaces(api_port_sources(objs)) == {"gateway-system"}


def test_ingress_streams_sse(tmp_path: Path) -> None:
    objs = render_with(tmp_path, "ingress")
    ingress = one(objs, "Ingress", "montage")
    kubernetes_validate.validate(ingress, KUBERNETES_VERSION, strict=True)
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(notes["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    assert notes["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-body-size"].removesuffix("m")) >= 11
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = one(objs, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert backend["port"]["name"] == "http", "never the ops port"


def test_httproute_streams_sse(tmp_path: Path) -> None:
    objs = render_with(tmp_path, "gateway-api")
    route = one(objs, "HTTPRoute", "montage")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    (rule,) = route["spec"]["rules"]
    assert rule["timeouts"]["request"] == rule["timeouts"]["backendRequest"] == "1h"
    (backend,) = rule["backendRefs"]
    service = one(objs, "Service", backend["name"])
    assert backend["port"] == next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http")
    assert route["spec"]["parentRefs"][0]["kind"] == "Gateway"
    for policy in (o for o in objs if o["kind"] == "NetworkPolicy"):
        kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)


def test_production_uses_the_gateway_api() -> None:
    objs = kustomize_lite.build(K8S / "overlays" / "production")
    kinds = {o["kind"] for o in objs}
    assert "HTTPRoute" in kinds and "Ingress" not in kinds
    assert one(objs, "ConfigMap", "montage-config")["data"]["TRUSTED_PROXY_HOPS"] == "1"
