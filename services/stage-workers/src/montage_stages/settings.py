"""Settings of the stage workers: one frozen Struct, read once in ``main()`` and passed in.

Every field maps to the upper-cased environment variable of the same name
(``video_width`` ← ``VIDEO_WIDTH``); load with ``montage_common.settings.load(StageSettings)``.
"""

from __future__ import annotations

from typing import Literal

from montage_common.settings import CommonSettings


class StageSettings(CommonSettings, frozen=True, kw_only=True):
    """What the six stages need: render size, parallelism, pricing and provider selection."""

    # --- local rendering -----------------------------------------------------------
    video_width: int = 640
    video_height: int = 360
    video_fps: int = 24
    max_parallel_clips: int = 5
    x264_preset: str = "veryfast"  # the final video
    x264_crf: int = 23
    clip_x264_preset: str = "ultrafast"  # intermediate clips, re-encoded by the composer
    clip_x264_crf: int = 20
    audio_bitrate: str = "160k"
    clip_min_seconds: float = 3.0
    clip_max_seconds: float = 8.0
    # --- cost ----------------------------------------------------------------------
    # Local work is priced by measured compute seconds at this rate, so budgets are real offline.
    local_compute_rate_usd_per_second: float = 0.002
    # --- providers (empty URL = local path) ------------------------------------------
    llm_url: str = ""  # OpenAI-compatible base URL, e.g. http://127.0.0.1:9000/v1
    llm_api_key: str = ""
    llm_model: str = "gpt-4o-mini"
    llm_usd_per_1k_tokens: float = 0.0006
    llm_timeout_seconds: float = 60.0
    image_provider_url: str = ""  # OpenAI-compatible images endpoint base URL
    image_provider_api_key: str = ""
    image_provider_model: str = "gpt-image-1"
    image_usd_per_image: float = 0.04
    video_provider: Literal["local", "ragnarok"] = "local"
    ragnarok_proxy_url: str = "http://127.0.0.1:8082"
    ragnarok_usd_per_second: float = 0.05
    ragnarok_poll_seconds: float = 2.0
    ragnarok_timeout_seconds: float = 600.0
    stt_url: str = ""  # speech-to-text provider for lyrics; empty = no lyrics
    ffmpeg_path: str = ""  # empty: system ffmpeg, else the imageio-ffmpeg binary
