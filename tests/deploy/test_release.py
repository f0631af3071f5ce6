"""Releases apply without manual steps: the production overlay rendered for two image tags, the
second applied over the first as ``kubectl apply`` would.

``kubectl apply`` refuses to change an immutable field of an existing object (a Job's pod
template above all); an object of a new name is simply created. So the second release applies
cleanly when no object it shares (kind, namespace, name) with the first changes an immutable
field. The migration Job is named after the tag; Argo CD and Flux find their annotations on it.
"""

from __future__ import annotations

import re
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
Obj = dict[str, Any]
# Fields an update may not change (apiserver validation), by kind.
IMMUTABLE = {"Job": ("spec.template", "spec.selector", "spec.completions"), "Service": ("spec.clusterIP",)}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def release(tmp_path: Path, tag: str) -> list[Obj]:
    """The production overlay after ``kustomize edit set image montage=...:<tag>``."""
    tree = tmp_path / tag / "k8s"
    shutil.copytree(K8S, tree)
    overlay = tree / "overlays" / "production"
    spec = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    (image,) = spec["images"]
    image["newTag"] = tag
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    objs = kustomize_lite.build(overlay)
    if shutil.which("kubectl"):  # the real kustomize agrees, replacements included
        out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
        assert sorted(objs, key=key) == sorted(yaml.safe_load_all(out.stdout), key=key)
    return objs


def ident(obj: Obj) -> tuple[str, str, str]:
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def field(obj: Obj, path: str) -> Any:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def refused_by_apply(first: list[Obj], second: list[Obj]) -> list[str]:
    """What ``kubectl apply`` of ``second`` over ``first`` would refuse (immutable fields changed)."""
    before = {ident(o): o for o in first}
    problems = []
    for obj in second:
        old = before.get(ident(obj))
        for path in IMMUTABLE.get(obj["kind"], ()) if old else ():
            if field(old, path) != field(obj, path):
                problems.append(f"{ident(obj)}: {path} changed")
    return problems


def test_the_second_release_applies_over_the_first(tmp_path: Path) -> None:
    first, second = release(tmp_path, "0.1.0"), release(tmp_path, "0.2.0")
    assert not refused_by_apply(first, second)
    (job1,) = [o for o in first if o["kind"] == "Job"]
    (job2,) = [o for o in second if o["kind"] == "Job"]
    assert (job1["metadata"]["name"], job2["metadata"]["name"]) == ("migrate-0.1.0", "migrate-0.2.0")
    assert job2["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/montage:0.2.0"
    # Everything else keeps its name: Deployments roll, they are not duplicated.
    assert {ident(o) for o in first if o["kind"] != "Job"} == {ident(o) for o in second if o["kind"] != "Job"}
    for job in (job1, job2):
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
        assert DNS_LABEL.match(job["metadata"]["name"].replace(".", "-")) and len(job["metadata"]["name"]) <= 63


def test_the_same_job_name_with_a_new_image_would_be_refused(tmp_path: Path) -> None:
    """The check above can fail: a fixed Job name (the base alone) changes its pod template."""
    first = release(tmp_path, "0.1.0")
    second = [dict(o) for o in release(tmp_path, "0.2.0")]
    for obj in second:
        if obj["kind"] == "Job":
            obj["metadata"] = {**obj["metadata"], "name": "migrate-0.1.0"}
    assert refused_by_apply(first, second) == ["('Job', 'montage', 'migrate-0.1.0'): spec.template changed"]


def test_argo_cd_and_flux_find_their_annotations() -> None:
    (job,) = [o for o in kustomize_lite.build(K8S / "overlays" / "production") if o["kind"] == "Job"]
    notes = job["metadata"]["annotations"]
    assert notes["argocd.argoproj.io/hook"] == "PreSync"
    assert notes["argocd.argoproj.io/hook-delete-policy"] == "BeforeHookCreation"
    assert notes["kustomize.toolkit.fluxcd.io/force"] == "enabled"
    # A PreSync hook runs before the ConfigMap exists on a first install: it must not need it.
    env_from = job["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert all(ref["configMapRef"].get("optional") is True for ref in env_from if "configMapRef" in ref)


@pytest.mark.parametrize("tag", ["0.2.0", "v1.4.0-rc.1", "3f9c2ab"])
def test_usual_tags_make_valid_job_names(tmp_path: Path, tag: str) -> None:
    (job,) = [o for o in release(tmp_path, tag) if o["kind"] == "Job"]
    assert job["metadata"]["name"] == f"migrate-{tag}"
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
