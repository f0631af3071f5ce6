"""Settings of the stage workers: one frozen Struct, read once in ``main()`` and passed in.

Every field maps to the upper-cased environment variable of the same name
(``video_width`` ← ``VIDEO_WIDTH``); load with ``montage_common.settings.load(StageSettings)``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from montage_common.settings import PricingSettings
from msgspec import Meta

from montage_stages.runtime.provider_limits import parse_limits


class StageSettings(PricingSettings, frozen=True, kw_only=True):
    """What the six stages need: parallelism and encoding, the providers' credentials and timeouts
    (render size, provider selection and prices: :class:`~montage_common.settings.PricingSettings`)."""

    # --- local rendering -----------------------------------------------------------
    max_parallel_clips: Annotated[int, Meta(description="clips rendered at once per job")] = 5
    x264_preset: Annotated[
        str,
        Meta(
            description="x264 preset of every clip (clips are encoded once, in their final form, and joined without re-encoding)"
        ),
    ] = "superfast"
    x264_params: Annotated[
        str,
        Meta(
            description="Extra x264 options (key=value:...): superfast plus macroblock-tree rate control, which here gives smaller files than veryfast at the same quality for half the encoding time."
        ),
    ] = "rc-lookahead=10:mbtree=1"
    x264_crf: Annotated[int, Meta(description="quality of the video (lower is better)")] = 23
    audio_bitrate: Annotated[str, Meta(description="AAC bitrate of the final video's audio")] = "160k"
    aac_coder: Annotated[
        Literal["twoloop", "fast"], Meta(description="ffmpeg's AAC search: fast takes half of twoloop's time")
    ] = "fast"
    fault_injection: Annotated[
        bool,
        Meta(
            description="Development only (ignored otherwise): a stage fails once for a job when a test sets its"
            " fault key in Redis (montage_stages.faults)"
        ),
    ] = False
    # --- providers: one seam per capability, each off (the local path) while its URL is empty;
    # the URLs, models, prices and the frame size are PricingSettings' (the orchestrator's estimate
    # reads them too) ---
    allow_local_providers: Annotated[
        bool,
        Meta(
            description="ENVIRONMENT=production: a stage worker whose provider is not configured (LLM_URL, STT_URL,"
            " IMAGE_PROVIDER_URL, VIDEO_PROVIDER left local) refuses to start unless this says the local stand-ins"
            " are intended"
        ),
    ] = False
    llm_api_key: Annotated[str, Meta(description="API key of the text provider")] = ""
    llm_timeout_seconds: Annotated[
        float, Meta(description="one text-provider call; past it the call counts as a retryable failure")
    ] = 60.0
    stt_api_key: Annotated[str, Meta(description="API key of the transcription provider")] = ""
    stt_timeout_seconds: Annotated[float, Meta(description="one transcription call")] = 120.0
    image_provider_api_key: Annotated[str, Meta(description="API key of the image provider")] = ""
    image_provider_size: Annotated[
        str, Meta(description="size asked of the image provider (16:9 keeps stills uncropped)")
    ] = "1536x864"
    image_provider_quality: Annotated[
        str, Meta(description="quality asked of the image provider (low | medium | high; empty: not sent)")
    ] = "low"
    image_timeout_seconds: Annotated[float, Meta(description="one image-provider call")] = 120.0
    ragnarok_proxy_url: Annotated[
        str, Meta(description="where ragnarok-proxy is (forwarding; RAGNAROK clip rendering)")
    ] = "http://127.0.0.1:8082"
    ragnarok_business_name: Annotated[
        str, Meta(description="business_name of Montage's RAGNAROK workflows (RAGNAROK's daily limit counts per name)")
    ] = "Montage"
    ragnarok_request_timeout_seconds: Annotated[
        float, Meta(description="one call to ragnarok-proxy (submit, status) or one clip download")
    ] = 30.0
    ragnarok_poll_seconds: Annotated[float, Meta(description="how often a RAGNAROK-rendered clip is polled")] = 2.0
    ragnarok_clip_timeout_seconds: Annotated[
        float,
        Meta(
            description="a RAGNAROK-rendered clip not finished by then counts as failed (the whole clip, not one call)"
        ),
    ] = 600.0
    runway_api_key: Annotated[
        str, Meta(description="VIDEO_PROVIDER=runway: the Runway API secret (a Secret by reference in production)")
    ] = ""
    runway_base_url: Annotated[
        str, Meta(description="VIDEO_PROVIDER=runway: the API's base URL (a stand-in's in tests)")
    ] = "https://api.dev.runwayml.com"
    runway_model: Annotated[str, Meta(description="VIDEO_PROVIDER=runway: the image-to-video model")] = "gen4_turbo"
    runway_usd_per_credit: Annotated[
        float, Meta(description="USD per Runway credit: a task's reported credits times this is its recorded cost")
    ] = 0.01
    runway_request_timeout_seconds: Annotated[
        float, Meta(description="one call to Runway's API (create, retrieve) or one output download")
    ] = 30.0
    runway_poll_seconds: Annotated[float, Meta(description="how often a Runway task is polled")] = 5.0
    runway_clip_timeout_seconds: Annotated[
        float,
        Meta(description="a Runway task not finished by then (THROTTLED time included) counts as a retryable failure"),
    ] = 600.0
    provider_max_concurrency: Annotated[
        str,
        Meta(
            description="calls in flight at once per provider across every worker and replica, provider=N,…"
            " (a Redis semaphore; a Runway clip holds its slot from task creation to its end); a provider not"
            " listed is not limited"
        ),
    ] = "runway=5"
    provider_lease_seconds: Annotated[
        float,
        Meta(description="a provider slot whose worker stopped renewing it (it died) is freed after this long"),
    ] = 30.0
    ffmpeg_path: Annotated[str, Meta(description="empty: system ffmpeg, else the imageio-ffmpeg binary")] = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            parse_limits(self.provider_max_concurrency)
        except ValueError as exc:
            raise ValueError(f"PROVIDER_MAX_CONCURRENCY: {exc}") from None

    @property
    def provider_limits(self) -> dict[str, int]:
        """``PROVIDER_MAX_CONCURRENCY`` as provider -> N."""
        return parse_limits(self.provider_max_concurrency)
