"""A small, pure-Python subset of ``kustomize build``, enough for ``deploy/k8s``.

Used by the deployment tests so they run where no ``kubectl``/``kustomize`` binary exists; where
one does, the tests check that both render the same objects. Supported:

- ``resources`` (files with one or more documents, or directories with a kustomization),
- ``components`` (``kind: Component``: their resources are added, then their patches applied),
- ``patches`` with strategic-merge YAML (``path`` or inline ``patch``), aimed either by the patch's
  own kind and name or by ``target`` (``kind``, ``name``, equality ``labelSelector``),
- ``namespace`` and ``images`` (``newName``, ``newTag``, ``digest``),
- ``replacements`` (inline; a source ``kind``/``name``/``fieldPath`` with ``options.delimiter``/
  ``index``, targets selected by ``kind``/``name`` with the same options), run last, after
  ``images``, as kustomize does,
- ``secretGenerator`` (``envs`` files and ``literals``, type Opaque) with
  ``generatorOptions.disableNameSuffixHash: true`` (name hashing is refused, not imitated).

Anything else in a kustomization is refused rather than silently ignored.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

SUPPORTED = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "patches",
    "namespace",
    "images",
    "secretGenerator",
    "generatorOptions",
    "replacements",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume"}
# Strategic-merge keys of the list fields used here (k8s.io/api patchMergeKey).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}


def load_docs(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomization_file(directory: Path) -> Path:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"no kustomization in {directory}")


def _list_merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        if all(isinstance(i, dict) and "containerPort" in i for i in items):
            return "containerPort"
        if all(isinstance(i, dict) and "port" in i for i in items):
            return "port"
        return None
    return MERGE_KEYS.get(field)


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """Merge ``patch`` into ``base``: maps merge (``null`` deletes), keyed lists merge by key."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list):
        key = _list_merge_key(field, base + patch)
        if key is None:
            return copy.deepcopy(patch)
        # Like kustomize (kyaml): the patch's items first, in its order, then the rest of base.
        by_key = {b.get(key): b for b in base}
        merged = [strategic_merge(by_key[i.get(key)], i, field) if i.get(key) in by_key else i for i in patch]
        patched = {i.get(key) for i in patch}
        return copy.deepcopy(merged) + [b for b in base if b.get(key) not in patched]
    return copy.deepcopy(patch)


def _labels_match(obj: Obj, selector: str) -> bool:
    labels = obj.get("metadata", {}).get("labels", {}) or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "=" not in term or "!=" in term:
            raise ValueError(f"only equality label selectors are supported: {selector!r}")
        key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
        if labels.get(key) != value:
            return False
    return True


def _selected(obj: Obj, target: Obj) -> bool:
    unsupported = set(target) - {"kind", "name", "labelSelector", "group", "version"}
    if unsupported:
        raise ValueError(f"unsupported patch target fields: {sorted(unsupported)}")
    if "kind" in target and obj.get("kind") != target["kind"]:
        return False
    if "name" in target and obj["metadata"]["name"] != target["name"]:
        return False
    return "labelSelector" not in target or _labels_match(obj, target["labelSelector"])


def _apply_patches(objs: list[Obj], patches: list[Obj], directory: Path) -> list[Obj]:
    for entry in patches:
        if "path" in entry:
            docs = load_docs(directory / entry["path"])
        elif "patch" in entry:
            docs = [d for d in yaml.safe_load_all(entry["patch"]) if d]
        else:
            raise ValueError(f"patch needs path or patch: {entry}")
        for doc in docs:
            if "op" in doc or isinstance(doc, list):
                raise ValueError("JSON 6902 patches are not supported")
            target = entry.get("target") or {"kind": doc["kind"], "name": doc["metadata"]["name"]}
            hits = [i for i, o in enumerate(objs) if _selected(o, target)]
            if not hits:
                raise ValueError(f"patch {entry} in {directory} matches nothing")
            body = copy.deepcopy(doc)
            if "target" in entry:  # the patch's own name is a placeholder; keep the target's
                body.get("metadata", {}).pop("name", None)
            for i in hits:
                objs[i] = strategic_merge(objs[i], body)
    return objs


def _set_images(objs: list[Obj], images: list[Obj]) -> None:
    for obj in objs:
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            for image in images:
                current = container.get("image", "")
                name = current.split("@", 1)[0]
                if ":" in name.rsplit("/", 1)[-1]:
                    name = name.rsplit(":", 1)[0]
                if current != image["name"] and name != image["name"]:
                    continue
                new = image.get("newName", image["name"])
                if "digest" in image:
                    new += "@" + image["digest"]
                elif "newTag" in image:
                    new += ":" + str(image["newTag"])
                container["image"] = new


def _encode(value: str) -> str:
    """Base64 as kustomize writes it (kyaml encodeBase64: 70-character lines when longer)."""
    encoded = base64.b64encode(value.encode()).decode()
    line = 70
    if len(encoded) < line:
        return encoded
    return "".join(encoded[i : i + line] + "\n" for i in range(0, len(encoded), line))


def _env_file(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for raw in path.read_text().splitlines():
        text = raw.lstrip()
        if not text or text.startswith("#"):
            continue
        if "=" not in text:
            raise ValueError(f"{path}: {text!r} takes its value from the environment: not supported")
        key, value = text.split("=", 1)
        pairs.append((key, value))
    return pairs


def _generate_secrets(spec: Obj, directory: Path) -> list[Obj]:
    options = spec.get("generatorOptions") or {}
    if set(options) - {"disableNameSuffixHash"}:
        raise ValueError(f"unsupported generatorOptions {sorted(options)}")
    out = []
    for gen in spec.get("secretGenerator", []):
        unsupported = set(gen) - {"name", "envs", "literals", "type"}
        if unsupported:
            raise ValueError(f"unsupported secretGenerator fields {sorted(unsupported)}")
        if not options.get("disableNameSuffixHash"):
            raise ValueError(
                "secretGenerator without generatorOptions.disableNameSuffixHash: name hashes not supported"
            )
        pairs = [p for env in gen.get("envs", []) for p in _env_file(directory / env)]
        pairs += [tuple(lit.split("=", 1)) for lit in gen.get("literals", [])]
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": gen["name"]},
                "type": gen.get("type", "Opaque"),
                "data": {key: _encode(value) for key, value in pairs},
            }
        )
    return out


def _path(field_path: str) -> list[str]:
    """``spec.template.spec.containers.[name=x].image`` as segments (``[k=v]`` selects a list item)."""
    return [seg for seg in field_path.replace(".[", "\0[").replace(".", "\0").split("\0") if seg]


def _step(node: Any, seg: str) -> Any:
    if seg.startswith("[") and seg.endswith("]"):
        key, value = seg[1:-1].split("=", 1)
        (hit,) = [item for item in node if str(item.get(key)) == value]
        return hit
    if isinstance(node, list):
        return node[int(seg)]
    return node[seg]


def _get(obj: Obj, field_path: str) -> Any:
    node: Any = obj
    for seg in _path(field_path):
        node = _step(node, seg)
    return node


def _set(obj: Obj, field_path: str, value: Any) -> None:
    *parents, last = _path(field_path)
    node: Any = obj
    for seg in parents:
        node = _step(node, seg)
    node[last] = value


def _replacements(objs: list[Obj], replacements: list[Obj]) -> None:
    for rep in replacements:
        if set(rep) - {"source", "targets"}:
            raise ValueError(f"unsupported replacement fields {sorted(rep)} (path: is not supported)")
        src = rep["source"]
        (source,) = [o for o in objs if _selected(o, {k: src[k] for k in ("kind", "name") if k in src})]
        value = _get(source, src.get("fieldPath", "metadata.name"))
        if opts := src.get("options"):
            value = str(value).split(opts["delimiter"])[opts.get("index", 0)]
        for target in rep["targets"]:
            select = {k: target["select"][k] for k in ("kind", "name") if k in target["select"]}
            hits = [o for o in objs if _selected(o, select)]
            if not hits:
                raise ValueError(f"replacement target {select} matches nothing")
            for obj in hits:
                for field_path in target["fieldPaths"]:
                    new = value
                    if opts := target.get("options"):
                        parts = str(_get(obj, field_path)).split(opts["delimiter"])
                        index = opts.get("index", 0)
                        if index < len(parts):
                            parts[index] = str(value)
                        elif index == len(parts):  # one past the end: appended (kyaml's behaviour)
                            parts.append(str(value))
                        else:
                            raise ValueError(f"replacement index {index} out of range in {parts}")
                        new = opts["delimiter"].join(parts)
                    _set(obj, field_path, new)


def build(directory: Path, *, component: bool = False) -> list[Obj]:
    """Render the kustomization (or, with ``component``, the component) in ``directory``."""
    return _build(directory, [], component=component)


def _build(directory: Path, accumulated: list[Obj], *, component: bool) -> list[Obj]:
    directory = directory.resolve()
    spec = yaml.safe_load(_kustomization_file(directory).read_text()) or {}
    unsupported = set(spec) - SUPPORTED
    if unsupported:
        raise ValueError(f"{directory}: unsupported kustomization fields {sorted(unsupported)}")
    expected = "Component" if component else "Kustomization"
    if spec.get("kind", "Kustomization") != expected:
        raise ValueError(f"{directory}: expected kind {expected}, found {spec.get('kind')}")
    objs = accumulated if component else []
    for res in spec.get("resources", []):
        path = directory / res
        objs.extend(build(path) if path.is_dir() else load_docs(path))
    objs.extend(_generate_secrets(spec, directory))
    for comp in spec.get("components", []):
        objs = _build(directory / comp, objs, component=True)
    objs = _apply_patches(objs, spec.get("patches", []), directory)
    if "namespace" in spec:
        for obj in objs:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
    _set_images(objs, spec.get("images", []))
    _replacements(objs, spec.get("replacements", []))
    seen: set[tuple[str, str, str]] = set()
    for obj in objs:
        ident = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if ident in seen:
            raise ValueError(f"{directory}: duplicate object {ident}")
        seen.add(ident)
    return objs
