"""Settings of the stage workers: one frozen Struct, read once in ``main()`` and passed in.

Every field maps to the upper-cased environment variable of the same name
(``video_width`` ← ``VIDEO_WIDTH``); load with ``montage_common.settings.load(StageSettings)``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from montage_common.settings import CommonSettings
from msgspec import Meta


class StageSettings(CommonSettings, frozen=True, kw_only=True):
    """What the six stages need: render size, parallelism, pricing and provider selection."""

    # --- local rendering -----------------------------------------------------------
    video_resolution: Annotated[
        Literal["", "360p", "720p", "1080p"],
        Meta(
            description="Size of clips and the final video: 360p (640x360), 720p (1280x720) or 1080p (1920x1080); empty: VIDEO_WIDTH x VIDEO_HEIGHT."
        ),
    ] = ""
    video_width: Annotated[
        int, Meta(description="width of clips and the final video when VIDEO_RESOLUTION is empty")
    ] = 640
    video_height: Annotated[
        int, Meta(description="height of clips and the final video when VIDEO_RESOLUTION is empty")
    ] = 360
    video_fps: Annotated[int, Meta(description="frame rate of clips and the final video")] = 24
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
    clip_min_seconds: Annotated[
        float, Meta(description="shortest clip the planner makes (section changes may fold shorter ones)")
    ] = 3.0
    clip_max_seconds: Annotated[float, Meta(description="longest clip the planner makes")] = 8.0
    fault_injection: Annotated[
        bool,
        Meta(
            description="Development only (ignored otherwise): a stage fails once for a job when a test sets its"
            " fault key in Redis (montage_stages.faults)"
        ),
    ] = False
    # --- cost ----------------------------------------------------------------------
    local_compute_rate_usd_per_second: Annotated[
        float,
        Meta(description="Local work is priced by measured compute seconds at this rate, so budgets are real offline."),
    ] = 0.002
    # --- providers: one seam per capability, each off (the local path) while its URL is empty ---
    llm_url: Annotated[
        str,
        Meta(
            description="Text provider (scene planning, clip prompts): an OpenAI-compatible base URL, e.g."
            " https://api.openai.com/v1 or http://127.0.0.1:11434/v1 (Ollama); empty: local planner and prompts"
        ),
    ] = ""
    llm_api_key: Annotated[str, Meta(description="API key of the text provider")] = ""
    llm_model: Annotated[str, Meta(description="chat model of the text provider (structured JSON output)")] = (
        "gpt-5.4-mini"
    )
    llm_timeout_seconds: Annotated[
        float, Meta(description="one text-provider call; past it the call counts as a retryable failure")
    ] = 60.0
    stt_url: Annotated[
        str,
        Meta(
            description="Lyrics: an OpenAI-compatible base URL serving /audio/transcriptions (verbose_json with"
            " word timestamps); empty: no lyrics"
        ),
    ] = ""
    stt_api_key: Annotated[str, Meta(description="API key of the transcription provider")] = ""
    stt_model: Annotated[
        str, Meta(description="transcription model (must support word timestamps, e.g. whisper-1)")
    ] = "whisper-1"
    stt_timeout_seconds: Annotated[float, Meta(description="one transcription call")] = 120.0
    image_provider_url: Annotated[
        str,
        Meta(description="Reference stills: an OpenAI-compatible base URL serving /images/generations; empty: local"),
    ] = ""
    image_provider_api_key: Annotated[str, Meta(description="API key of the image provider")] = ""
    image_provider_model: Annotated[str, Meta(description="image model name")] = "gpt-image-2"
    image_provider_size: Annotated[
        str, Meta(description="size asked of the image provider (16:9 keeps stills uncropped)")
    ] = "1536x864"
    image_provider_quality: Annotated[
        str, Meta(description="quality asked of the image provider (low | medium | high; empty: not sent)")
    ] = "low"
    image_timeout_seconds: Annotated[float, Meta(description="one image-provider call")] = 120.0
    video_provider: Annotated[
        Literal["local", "ragnarok"],
        Meta(description="clips: local (ffmpeg animates the stills) or ragnarok (RAGNAROK through ragnarok-proxy)"),
    ] = "local"
    ragnarok_proxy_url: Annotated[
        str, Meta(description="where ragnarok-proxy is (forwarding; RAGNAROK clip rendering)")
    ] = "http://127.0.0.1:8082"
    ragnarok_business_name: Annotated[
        str, Meta(description="business_name of Montage's RAGNAROK workflows (RAGNAROK's daily limit counts per name)")
    ] = "Montage"
    ragnarok_request_timeout_seconds: Annotated[
        float, Meta(description="one call to ragnarok-proxy (submit, status) or one clip download")
    ] = 30.0
    ragnarok_usd_per_second: Annotated[
        float, Meta(description="price per second of RAGNAROK video, used only when RAGNAROK reports no cost_usd")
    ] = 0.05
    ragnarok_poll_seconds: Annotated[float, Meta(description="how often a RAGNAROK-rendered clip is polled")] = 2.0
    ragnarok_clip_timeout_seconds: Annotated[
        float,
        Meta(
            description="a RAGNAROK-rendered clip not finished by then counts as failed (the whole clip, not one call)"
        ),
    ] = 600.0
    # --- prices (docs/providers.md: where they come from, and their date) --------------
    llm_prices: Annotated[
        str,
        Meta(
            description="USD per 1M input/output tokens per chat model, model=input/output,… (OpenAI list prices"
            " as of 2026-06, docs/providers.md); a model not listed costs 0 (self-hosted) and is logged"
        ),
    ] = "gpt-5.4-mini=0.75/4.50,gpt-5.4-nano=0.20/1.25,gpt-5.4=2.50/15.00,gpt-5.5=5.00/30.00"
    image_prices: Annotated[
        str,
        Meta(
            description="USD per generated image per image model, model=usd,… (gpt-image-2 at low quality and"
            " 1536x864, from OpenAI's 2026-06 token prices, docs/providers.md)"
        ),
    ] = "gpt-image-2=0.008"
    stt_prices: Annotated[
        str,
        Meta(
            description="USD per minute of transcribed audio per model, model=usd,… (OpenAI list prices as of 2026-06)"
        ),
    ] = "whisper-1=0.006,gpt-4o-transcribe=0.006,gpt-4o-mini-transcribe=0.003"
    ffmpeg_path: Annotated[str, Meta(description="empty: system ffmpeg, else the imageio-ffmpeg binary")] = ""

    def __post_init__(self) -> None:
        for name, parts in (("llm_prices", 2), ("image_prices", 1), ("stt_prices", 1)):
            try:
                price_table(getattr(self, name), parts)
            except ValueError as exc:
                raise ValueError(f"{name.upper()}: {exc}") from None

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of clips and the final video."""
        return RESOLUTIONS.get(self.video_resolution, (self.video_width, self.video_height))


RESOLUTIONS: dict[str, tuple[int, int]] = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080)}


def price_table(spec: str, parts: int = 1) -> dict[str, tuple[float, ...]]:
    """``"model=a/b,other=c/d"`` → ``{"model": (a, b), …}``; each entry must have ``parts`` numbers."""
    table: dict[str, tuple[float, ...]] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        model, sep, numbers = entry.rpartition("=")
        try:
            values = tuple(float(v) for v in numbers.split("/"))
        except ValueError:
            values = ()
        if not sep or not model.strip() or len(values) != parts or any(v < 0 for v in values):
            raise ValueError(f"bad price entry {entry!r} (expected model={'/'.join(['usd'] * parts)})")
        table[model.strip()] = values
    return table
