"""``make up PROVIDERS=fake``: the launcher adds the OpenAI-compatible stand-in and points every
provider seam at the stand-ins (the end-to-end run of that stack is tests/e2e/test_providers.py)."""

from __future__ import annotations

from pathlib import Path

from montage_dev.devstack import Stack


def _specs(tmp_path: Path, **env: str) -> dict[str, list[str] | dict[str, str]]:
    stack = Stack(var_dir=tmp_path, env=env, openai_port=18003, ragnarok_port=18001)
    found: dict[str, list[str] | dict[str, str]] = {}
    for spec in stack.service_specs(dict(env)):
        found[spec.name] = spec.argv
        found[f"{spec.name}.env"] = spec.env
    return found


def test_providers_fake_wires_every_seam(tmp_path: Path) -> None:
    specs = _specs(tmp_path, PROVIDERS="fake")
    assert specs["fake-openai"][-2:] == ["--port", "18003"]
    assert specs["fake-ragnarok"][-3:] == ["--serve-videos", "--daily-limit", "100000"]
    worker = specs["scene_planner.env"]
    assert isinstance(worker, dict)
    base = "http://127.0.0.1:18003/v1"
    assert (worker["LLM_URL"], worker["STT_URL"], worker["IMAGE_PROVIDER_URL"]) == (base, base, base)
    assert worker["VIDEO_PROVIDER"] == "ragnarok" and worker["RAGNAROK_URL"] == "http://127.0.0.1:18001"


def test_without_it_the_local_path(tmp_path: Path) -> None:
    specs = _specs(tmp_path)
    assert "fake-openai" not in specs and "--serve-videos" not in specs["fake-ragnarok"]
    worker = specs["scene_planner.env"]
    assert isinstance(worker, dict) and "LLM_URL" not in worker and "VIDEO_PROVIDER" not in worker
