"""Which provider each stage needs, and the production rule that it be configured.

A capability whose setting is left at its default runs on the local stand-in (the local planner,
numpy stills, ffmpeg-animated clips, no lyrics). That is right in development and wrong in a
production install, where it would ship procedural pictures as a music video without a word. So
a production worker (``ENVIRONMENT=production``) refuses to start while its stage's provider is
not configured, naming the setting, unless ``ALLOW_LOCAL_PROVIDERS=true`` says the stand-ins are
intended. The composer needs no provider.
"""

from __future__ import annotations

from collections.abc import Callable

from montage_stages.runtime.settings import StageSettings

# One entry per capability: (the setting that switches it on, whether it is configured).
_Check = tuple[str, Callable[[StageSettings], bool]]

_TRANSCRIPTION: _Check = ("STT_URL", lambda s: bool(s.stt_url))
_TEXT: _Check = ("LLM_URL", lambda s: bool(s.llm_url))
_IMAGE: _Check = ("IMAGE_PROVIDER_URL", lambda s: bool(s.image_provider_url))
_VIDEO: _Check = ("VIDEO_PROVIDER", lambda s: s.video_provider != "local")
_RUNWAY_KEY: _Check = ("RUNWAY_API_KEY", lambda s: s.video_provider != "runway" or bool(s.runway_api_key))

STAGE_PROVIDERS: dict[str, tuple[_Check, ...]] = {
    "audio_parser": (_TRANSCRIPTION,),
    "scene_planner": (_TEXT,),
    "prompt_generator": (_TEXT,),
    "reference_generator": (_IMAGE,),
    "video_generator": (_VIDEO, _RUNWAY_KEY),
    "composer": (),
}


def unconfigured(settings: StageSettings, stage: str) -> list[str]:
    """The settings that would switch on ``stage``'s providers and are left at the local stand-in."""
    return [name for name, configured in STAGE_PROVIDERS.get(stage, ()) if not configured(settings)]


def provider_refusal(settings: StageSettings, stage: str) -> str | None:
    """Why a worker of ``stage`` must not start with these settings (None: it may)."""
    if settings.environment != "production" or settings.allow_local_providers:
        return None
    missing = unconfigured(settings, stage)
    if not missing:
        return None
    return (
        f"invalid configuration: ENVIRONMENT=production and {', '.join(missing)} left at the local stand-in,"
        f" which stage {stage} would then run; configure the provider (docs/providers.md) or set"
        " ALLOW_LOCAL_PROVIDERS=true if stand-ins are intended"
    )


def stage_provider(settings: StageSettings, stage: str) -> tuple[str, bool, str]:
    """(the provider ``stage`` runs on, whether it is configured, the settings that configure it),
    as the worker announces it for ``/api/v1/health`` and the operator console."""
    s = settings
    provider = {
        "audio_parser": "openai-transcriptions" if s.stt_url else "none",
        "scene_planner": "openai-chat" if s.llm_url else "local",
        "prompt_generator": "openai-chat" if s.llm_url else "local",
        "reference_generator": "openai-images" if s.image_provider_url else "local",
        "video_generator": s.video_provider,
        "composer": "local",
    }.get(stage, "local")
    checks = STAGE_PROVIDERS.get(stage, ())
    return provider, not unconfigured(settings, stage), ", ".join(name for name, _ in checks)
