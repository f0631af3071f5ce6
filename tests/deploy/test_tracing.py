"""The optional tracing component (``components/tracing``): every service, and nothing else, reads
the standard ``OTEL_*`` variables of the ConfigMap ``montage-tracing`` beside its settings; without
the component no workload sees an ``OTEL_`` variable (tracing is off by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
from montage_common import tracing

from . import kustomize_lite
from .test_edge import render_with
from .test_manifests import KUBERNETES_VERSION

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"gateway", "orchestrator", "ragnarok-proxy"}
# The SDK's own variables (opentelemetry.sdk.environment_variables) and the instrumentations' one.
STANDARD = {
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
    "OTEL_EXPORTER_OTLP_HEADERS",
}


def _sources(deploy: dict[str, Any]) -> list[str]:
    [container] = deploy["spec"]["template"]["spec"]["containers"]
    return [s["configMapRef"]["name"] for s in container.get("envFrom", [])]


def test_every_service_reads_the_tracing_config_beside_its_settings(tmp_path: Path) -> None:
    objs = render_with(tmp_path, "tracing")
    deployments = [o for o in objs if o["kind"] == "Deployment"]
    workers = {d["metadata"]["name"] for d in deployments if d["metadata"]["name"].startswith("stage-")}
    assert len(workers) == 6
    for deploy in deployments:
        assert _sources(deploy) == ["montage-config", "montage-tracing"], deploy["metadata"]["name"]
        kubernetes_validate.validate(deploy, KUBERNETES_VERSION, strict=True)
    assert {d["metadata"]["name"] for d in deployments} == SERVICES | workers
    [config] = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "montage-tracing"]
    kubernetes_validate.validate(config, KUBERNETES_VERSION, strict=True)
    data = config["data"]
    assert set(data) <= STANDARD
    assert tracing.exporters_wanted(data) == ["otlp"]  # on, over OTLP/HTTP
    assert data["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4318")
    assert "OTEL_SERVICE_NAME" not in data  # each process names itself
    # the migration Job is not a service: no traces
    [job] = [o for o in objs if o["kind"] == "Job"]
    assert "montage-tracing" not in str(job)


def test_tracing_is_off_unless_the_component_is_used() -> None:
    for overlay in ("overlays/development", "overlays/production"):
        rendered = str(kustomize_lite.build(ROOT / "deploy" / "k8s" / overlay))
        assert "OTEL_" not in rendered and "montage-tracing" not in rendered, overlay
