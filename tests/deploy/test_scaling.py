"""Autoscaling as rendered: what KEDA and the HPA would do with given work, read from the manifests.

The stage workers' ScaledObjects (components/keda) combine a pending and a lag trigger with
``advanced.scalingModifiers``; KEDA hands the formula's value to an HPA as one external metric
with an ``AverageValue`` target, so the HPA wants ``ceil(value / target)`` replicas, clamped to
``minReplicaCount``..``maxReplicaCount``, and keeps the current count while
``value / (target * current)`` is within 10 % of 1 (the HPA's default tolerance). The tests feed
pending and lag figures through the formula and targets found in the manifests, so a change of
the manifests shows here as a change of replica counts.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from montage_contracts.keys import Keys
from montage_contracts.pipeline import STAGES
from montage_stages.worker import WorkerSettings

from . import kustomize_lite

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
HPA_TOLERANCE = 0.1
Obj = dict[str, Any]


@cache
def production() -> tuple[Obj, ...]:
    return tuple(kustomize_lite.build(K8S / "overlays" / "production"))


def of_kind(objs: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


@cache
def scaled_objects() -> dict[str, Obj]:
    """ScaledObject by the stage of the Deployment it scales."""
    deployments = {d["metadata"]["name"]: d for d in of_kind(production(), "Deployment")}
    out = {}
    for so in of_kind(production(), "ScaledObject"):
        deploy = deployments[so["spec"]["scaleTargetRef"]["name"]]
        out[deploy["metadata"]["labels"]["montage.dev/stage"]] = so
    return out


_OPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def evaluate(formula: str, values: dict[str, float]) -> float:
    """The subset of KEDA's formula language (expr-lang) used here: names, numbers, + - * /, min, max."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Name):
            return values[node.id]
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"min", "max"}:
            return float({"min": min, "max": max}[node.func.id](ev(a) for a in node.args))
        raise ValueError(f"formula construct not modelled: {ast.dump(node)}")

    return ev(ast.parse(formula, mode="eval"))


def keda_replicas(
    so: Obj, pending: int, lag: int, current: int | None = None, *, clip_pending: int = 0, clip_lag: int = 0
) -> int:
    """Replicas the HPA behind ``so`` asks for when the group has ``pending`` and ``lag`` entries
    (and, for video_generator, the clip group ``clip_pending`` and ``clip_lag``)."""
    spec = so["spec"]
    modifiers = spec["advanced"]["scalingModifiers"]
    assert modifiers.get("metricType", "AverageValue") == "AverageValue"
    by_kind = {}
    for trigger in spec["triggers"]:
        meta = trigger["metadata"]
        kind = "lag" if "lagCount" in meta else "pending" if "pendingEntriesCount" in meta else "length"
        if meta["consumerGroup"] == Keys().clip_group():
            by_kind[trigger["name"]] = {"pending": clip_pending, "lag": clip_lag}[kind]
        else:
            by_kind[trigger["name"]] = {"pending": pending, "lag": lag}[kind]
    value = evaluate(modifiers["formula"], by_kind)
    target = float(modifiers["target"])
    low, high = spec["minReplicaCount"], spec["maxReplicaCount"]
    if current is not None and current > 0 and abs(value / (target * current) - 1) <= HPA_TOLERANCE:
        return current
    return max(low, min(high, math.ceil(value / target)))


def test_each_stage_scales_on_the_work_waiting_on_its_own_stream() -> None:
    objs = production()
    config = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "montage-config")
    keys = Keys(config["data"]["REDIS_NAMESPACE"])
    assert sorted(scaled_objects()) == sorted(STAGES)
    auths = {a["metadata"]["name"]: a for a in of_kind(objs, "TriggerAuthentication")}
    for stage, so in scaled_objects().items():
        triggers = so["spec"]["triggers"]
        own = [t for t in triggers if t["metadata"]["consumerGroup"] == keys.stage_group(stage)]
        clips = [t for t in triggers if t not in own]
        kinds = sorted("lag" if "lagCount" in t["metadata"] else "pending" for t in own)
        assert kinds == ["lag", "pending"], stage
        # video_generator also scales on its jobs' clips (every replica renders a share of them)
        if stage == "video_generator":
            assert sorted("lag" if "lagCount" in t["metadata"] else "pending" for t in clips) == ["lag", "pending"]
        else:
            assert not clips, stage
        for trigger in triggers:
            meta = trigger["metadata"]
            assert trigger["type"] == "redis-streams"
            if trigger in own:
                assert meta["stream"] == keys.stage_stream(stage)
            else:
                assert (meta["stream"], meta["consumerGroup"]) == (keys.clip_stream(), keys.clip_group())
            # Credentials, TLS and address come from the Secret, never from the workers' env.
            assert not {k for k in meta if k.endswith("FromEnv") or k in {"address", "password", "host"}}, stage
            assert trigger["authenticationRef"]["name"] in auths
        values = {**dict.fromkeys((t["name"] for t in own), 1.0), **dict.fromkeys((t["name"] for t in clips), 0.0)}
        formula = so["spec"]["advanced"]["scalingModifiers"]["formula"]
        assert evaluate(formula, values) == 2.0, "the formula adds pending and lag"


def test_the_target_is_a_workers_concurrency() -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind(production(), "Deployment")}
    for stage, so in scaled_objects().items():
        container = deployments[so["spec"]["scaleTargetRef"]["name"]]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        concurrency = int(env.get("WORKER_CONCURRENCY", WorkerSettings().worker_concurrency))
        assert float(so["spec"]["advanced"]["scalingModifiers"]["target"]) == concurrency, stage


@pytest.mark.parametrize(
    ("stage", "pending", "lag", "expected"),
    [
        ("audio_parser", 0, 0, 1),  # idle: minReplicaCount, never cold
        ("audio_parser", 3, 0, 1),  # one worker's three slots busy, nothing queued
        ("audio_parser", 3, 1, 2),  # one task queued behind a full worker
        ("scene_planner", 0, 7, 3),  # backlog only (nothing delivered yet): ceil(7 / 3)
        ("reference_generator", 6, 6, 4),
        ("prompt_generator", 9, 30, 5),  # ceil(39 / 3) = 13, capped at maxReplicaCount 5
        ("video_generator", 9, 30, 10),  # renders may use up to 10
        ("video_generator", 12, 9, 7),
        ("composer", 1, 0, 1),
    ],
)
def test_replicas_for_work_waiting(stage: str, pending: int, lag: int, expected: int) -> None:
    assert keda_replicas(scaled_objects()[stage], pending, lag) == expected


@pytest.mark.parametrize(
    ("tasks", "clip_pending", "clip_lag", "expected"),
    [
        (1, 0, 33, 7),  # one job's 33 clips just added: ceil(33 / 5) replicas render them
        (1, 5, 0, 1),  # one replica's CLIP_CONCURRENCY slots busy, nothing queued
        (1, 5, 1, 2),
        (12, 5, 0, 4),  # many jobs, few clips: the tasks decide, ceil(12 / 3)
        (3, 100, 100, 10),  # capped at maxReplicaCount
    ],
)
def test_video_generator_scales_on_its_jobs_clips(tasks: int, clip_pending: int, clip_lag: int, expected: int) -> None:
    so = scaled_objects()["video_generator"]
    assert keda_replicas(so, tasks, 0, clip_pending=clip_pending, clip_lag=clip_lag) == expected
    # the clip figure is per CLIP_CONCURRENCY, the workers' default
    settings = WorkerSettings()
    assert (settings.clip_concurrency or settings.max_parallel_clips) == 5


def test_hpa_tolerance_keeps_the_current_count() -> None:
    so = scaled_objects()["video_generator"]
    # 31 waiting against 10 replicas x 3 is within 10 %: no change; against 5 replicas it is not.
    assert keda_replicas(so, 30, 1, current=10) == 10
    assert keda_replicas(so, 12, 19, current=5) == 10
    # Queue drained: back to the minimum (after the 300 s scale-down stabilisation).
    assert keda_replicas(so, 0, 0, current=10) == 1


def test_bounds() -> None:
    for stage, so in scaled_objects().items():
        spec = so["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], stage
        assert keda_replicas(so, 10_000, 10_000) == spec["maxReplicaCount"]
        assert keda_replicas(so, 0, 0) == spec["minReplicaCount"]


@pytest.mark.parametrize("overlay", ["base", "overlays/development", "overlays/production"])
def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(overlay: str) -> None:
    objs = tuple(kustomize_lite.build(K8S / overlay))
    owned = {
        o["spec"]["scaleTargetRef"]["name"] for o in objs if o["kind"] in {"ScaledObject", "HorizontalPodAutoscaler"}
    }
    for deploy in of_kind(objs, "Deployment"):
        name = deploy["metadata"]["name"]
        if name in owned:
            assert "replicas" not in deploy["spec"], f"{name}: `replicas` fights the autoscaler on every apply"


def test_gateway_hpa_scales_on_cpu_and_open_sse_connections() -> None:
    (hpa,) = [h for h in of_kind(production(), "HorizontalPodAutoscaler") if h["metadata"]["name"] == "gateway"]
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert spec["minReplicas"] >= 2
    metrics = {m["type"]: m for m in spec["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    pods = metrics["Pods"]["pods"]
    # The gauge the gateway exports (montage_gateway.metrics.SSE_OPEN), per pod.
    from montage_gateway.metrics import SSE_OPEN

    assert pods["metric"]["name"] == SSE_OPEN._name
    assert pods["target"]["type"] == "AverageValue"
    per_pod = int(pods["target"]["averageValue"])
    # Below the 80 % of one process' measured capacity at which MontageSSENearCapacity fires.
    assert per_pod * 1.1 < 8000
    # 5 000 open streams want ceil(5000 / 2000) = 3 pods whatever the CPU says.
    assert max(spec["minReplicas"], math.ceil(5000 / per_pod)) == 3
