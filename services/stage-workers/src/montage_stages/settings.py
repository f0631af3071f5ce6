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
    # --- cost ----------------------------------------------------------------------
    local_compute_rate_usd_per_second: Annotated[
        float,
        Meta(description="Local work is priced by measured compute seconds at this rate, so budgets are real offline."),
    ] = 0.002
    # --- providers (empty URL = local path) ------------------------------------------
    llm_url: Annotated[str, Meta(description="OpenAI-compatible base URL, e.g. http://127.0.0.1:9000/v1")] = ""
    llm_api_key: Annotated[str, Meta(description="API key of the LLM planner")] = ""
    llm_model: Annotated[str, Meta(description="LLM model name")] = "gpt-4o-mini"
    llm_usd_per_1k_tokens: Annotated[float, Meta(description="LLM price (cost tracking)")] = 0.0006
    llm_timeout_seconds: Annotated[float, Meta(description="LLM call timeout (then the local plan is used)")] = 60.0
    image_provider_url: Annotated[str, Meta(description="OpenAI-compatible images endpoint base URL")] = ""
    image_provider_api_key: Annotated[str, Meta(description="API key of the image provider")] = ""
    image_provider_model: Annotated[str, Meta(description="image model name")] = "gpt-image-1"
    image_usd_per_image: Annotated[float, Meta(description="price per generated image (cost tracking)")] = 0.04
    video_provider: Annotated[Literal["local", "ragnarok"], Meta(description="local (ffmpeg) or ragnarok")] = "local"
    ragnarok_proxy_url: Annotated[
        str, Meta(description="where ragnarok-proxy is (forwarding; RAGNAROK clip rendering)")
    ] = "http://127.0.0.1:8082"
    ragnarok_usd_per_second: Annotated[
        float, Meta(description="price per second of RAGNAROK video (cost tracking)")
    ] = 0.05
    ragnarok_poll_seconds: Annotated[float, Meta(description="how often a RAGNAROK-rendered clip is polled")] = 2.0
    ragnarok_clip_timeout_seconds: Annotated[
        float,
        Meta(
            description="a RAGNAROK-rendered clip not finished by then counts as failed (the whole clip, not one call)"
        ),
    ] = 600.0
    stt_url: Annotated[str, Meta(description="speech-to-text provider for lyrics; empty = no lyrics")] = ""
    ffmpeg_path: Annotated[str, Meta(description="empty: system ffmpeg, else the imageio-ffmpeg binary")] = ""

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of clips and the final video."""
        return RESOLUTIONS.get(self.video_resolution, (self.video_width, self.video_height))


RESOLUTIONS: dict[str, tuple[int, int]] = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080)}
