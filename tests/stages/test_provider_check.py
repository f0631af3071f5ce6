"""Production requires providers: a stage worker whose provider is left at the local stand-in
refuses to start in production (naming the setting) unless ``ALLOW_LOCAL_PROVIDERS=true``.

Real worker processes (``python -m montage_stages``) on the real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest
from montage_stages.runtime.provider_check import STAGE_PROVIDERS, provider_refusal, unconfigured
from montage_stages.runtime.settings import StageSettings

START_TIMEOUT = 60.0  # bounds every wait on a worker process
MAX_LINES = 500


def production_env(redis_url: str, namespace: str, **extra: str) -> dict[str, str]:
    """A production worker's environment with every provider left at its local default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "STT_", "IMAGE_PROVIDER", "VIDEO_"))}
    env.pop("ALLOW_LOCAL_PROVIDERS", None)
    env.update(
        {
            "ENVIRONMENT": "production",
            "REDIS_URL": redis_url,
            "REDIS_NAMESPACE": namespace,
            "INTERNAL_SECRET": "test-internal-secret",
            "STORAGE_SIGNING_KEY": "test-signing-key",
            "LOG_FORMAT": "json",
            "OPS_PORT": "0",
            "STREAM_BLOCK_MS": "200",
            **extra,
        }
    )
    return env


async def spawn(stage: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "montage_stages",
        "--stage",
        stage,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def test_production_worker_without_its_provider_refuses_to_start(redis_url: str, namespace: str) -> None:
    proc = await spawn("video_generator", production_env(redis_url, namespace))
    out, _ = await asyncio.wait_for(proc.communicate(), START_TIMEOUT)
    text = out.decode()
    assert proc.returncode not in (0, None), text
    assert "VIDEO_PROVIDER" in text and "ALLOW_LOCAL_PROVIDERS" in text, text
    assert "stage_worker_started" not in text


async def test_allow_local_providers_lets_a_production_worker_start(redis_url: str, namespace: str) -> None:
    proc = await spawn("video_generator", production_env(redis_url, namespace, ALLOW_LOCAL_PROVIDERS="true"))
    seen: list[str] = []
    try:
        for _ in range(MAX_LINES):
            line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)).decode()  # type: ignore[union-attr]
            seen.append(line)
            if not line or "stage_worker_started" in line:
                break
        assert seen and "stage_worker_started" in seen[-1], "".join(seen)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), START_TIMEOUT)
    assert proc.returncode == 0


@pytest.mark.parametrize("stage", sorted(STAGE_PROVIDERS))
def test_each_stage_names_the_setting_it_needs(stage: str) -> None:
    bare = StageSettings(environment="production")
    expected = {
        "audio_parser": ["STT_URL"],
        "scene_planner": ["LLM_URL"],
        "prompt_generator": ["LLM_URL"],
        "reference_generator": ["IMAGE_PROVIDER_URL"],
        "video_generator": ["VIDEO_PROVIDER"],
        "composer": [],
    }[stage]
    assert unconfigured(bare, stage) == expected
    refusal = provider_refusal(bare, stage)
    assert (refusal is None) == (not expected)
    for name in expected:
        assert refusal is not None and name in refusal


def test_configured_allowed_or_not_production_starts() -> None:
    configured = StageSettings(
        environment="production",
        llm_url="https://api.openai.com/v1",
        stt_url="https://api.openai.com/v1",
        image_provider_url="https://api.openai.com/v1",
        video_provider="ragnarok",
    )
    for stage in STAGE_PROVIDERS:
        assert provider_refusal(configured, stage) is None
        assert provider_refusal(StageSettings(environment="production", allow_local_providers=True), stage) is None
        assert provider_refusal(StageSettings(environment="development"), stage) is None


def test_runway_needs_its_key_in_production() -> None:
    bare = StageSettings(environment="production", video_provider="runway")
    assert unconfigured(bare, "video_generator") == ["RUNWAY_API_KEY"]
    assert "RUNWAY_API_KEY" in (provider_refusal(bare, "video_generator") or "")
    keyed = StageSettings(environment="production", video_provider="runway", runway_api_key="key_from_a_secret")
    assert provider_refusal(keyed, "video_generator") is None
