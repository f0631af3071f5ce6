"""components/keda-cluster: KEDA's redis-cluster-streams triggers read every partition's stream
of each stage (as montage_contracts.keys lays them out for the component's REDIS_PARTITIONS), and
scale with the same arithmetic as components/keda."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from montage_contracts.keys import Keys

ROOT = Path(__file__).resolve().parents[2]
COMPONENT = ROOT / "deploy" / "k8s" / "components" / "keda-cluster"
SINGLE = ROOT / "deploy" / "k8s" / "components" / "keda"


def _load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_triggers_cover_every_partition_and_scale_like_the_single_redis_component() -> None:
    config = _load(COMPONENT / "cluster-config.yaml")[0]["data"]
    assert config["REDIS_CLUSTER"] == "true"
    keys = Keys("montage", int(config["REDIS_PARTITIONS"]), sharded_events=True)
    single = {so["metadata"]["name"]: so for so in _load(SINGLE / "scaledobjects.yaml")}
    cluster = {so["metadata"]["name"]: so for so in _load(COMPONENT / "scaledobjects.yaml")}
    assert cluster.keys() == single.keys()
    for name, so in cluster.items():
        spec, ref = so["spec"], single[name]["spec"]
        for field in ("scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
            assert spec[field] == ref[field], (name, field)
        stage = spec["triggers"][0]["metadata"]["consumerGroup"]
        assert {t["type"] for t in spec["triggers"]} == {"redis-cluster-streams"}
        own = [t for t in spec["triggers"] if t["metadata"]["consumerGroup"] == stage]
        clips = [t for t in spec["triggers"] if t not in own]
        for kind, count in (("pending", "pendingEntriesCount"), ("lag", "lagCount")):
            streams = [t["metadata"]["stream"] for t in own if count in t["metadata"]]
            assert streams == keys.stage_streams(stage), (name, kind)
            if stage == "video_generator":  # and its jobs' clips, in every partition
                streams = [t["metadata"]["stream"] for t in clips if count in t["metadata"]]
                assert streams == keys.clip_streams(), (name, kind)
        assert {t["metadata"]["consumerGroup"] for t in clips} <= {keys.clip_group()}
        assert bool(clips) == (stage == "video_generator"), name
        formula = spec["advanced"]["scalingModifiers"]["formula"]
        own_sum = " + ".join(t["name"] for t in own)
        if clips:
            clip_sum = " + ".join(t["name"] for t in clips)
            ref_formula = single[name]["spec"]["advanced"]["scalingModifiers"]["formula"]
            assert ref_formula == "max(pending + lag, (clip_pending + clip_lag) * 3 / 5)"
            assert formula == f"max({own_sum}, ({clip_sum}) * 3 / 5)", name
        else:
            assert sorted(formula.split(" + ")) == sorted(t["name"] for t in own)
        assert spec["advanced"]["scalingModifiers"]["target"] == ref["advanced"]["scalingModifiers"]["target"]
        assert {t["authenticationRef"]["name"] for t in spec["triggers"]} == {"montage-redis-cluster"}
    auth = _load(COMPONENT / "trigger-authentication.yaml")[0]
    assert auth["metadata"]["name"] == "montage-redis-cluster"
    assert {p["parameter"] for p in auth["spec"]["secretTargetRef"]} == {"addresses", "password", "tls"}
