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
    # Size of clips and the final video: 360p (640x360), 720p (1280x720) or 1080p (1920x1080);
    # empty: VIDEO_WIDTH x VIDEO_HEIGHT.
    video_resolution: Literal["", "360p", "720p", "1080p"] = ""
    video_width: int = 640  # width of clips and the final video when VIDEO_RESOLUTION is empty
    video_height: int = 360  # height of clips and the final video when VIDEO_RESOLUTION is empty
    video_fps: int = 24  # frame rate of clips and the final video
    max_parallel_clips: int = 5  # clips rendered at once per job
    # Clips are encoded once, with these settings, and joined without re-encoding.
    x264_preset: str = "superfast"
    # Extra x264 options (key=value:...): superfast plus macroblock-tree rate control, which here
    # gives smaller files than veryfast at the same quality for half the encoding time.
    x264_params: str = "rc-lookahead=10:mbtree=1"
    x264_crf: int = 23  # quality of the video (lower is better)
    audio_bitrate: str = "160k"  # AAC bitrate of the final video's audio
    aac_coder: Literal["twoloop", "fast"] = "fast"  # ffmpeg's AAC search: fast takes half of twoloop's time
    clip_min_seconds: float = 3.0  # shortest clip the planner makes (section changes may fold shorter ones)
    clip_max_seconds: float = 8.0  # longest clip the planner makes
    # --- cost ----------------------------------------------------------------------
    # Local work is priced by measured compute seconds at this rate, so budgets are real offline.
    local_compute_rate_usd_per_second: float = 0.002
    # --- providers (empty URL = local path) ------------------------------------------
    llm_url: str = ""  # OpenAI-compatible base URL, e.g. http://127.0.0.1:9000/v1
    llm_api_key: str = ""  # API key of the LLM planner
    llm_model: str = "gpt-4o-mini"  # LLM model name
    llm_usd_per_1k_tokens: float = 0.0006  # LLM price (cost tracking)
    llm_timeout_seconds: float = 60.0  # LLM call timeout (then the local plan is used)
    image_provider_url: str = ""  # OpenAI-compatible images endpoint base URL
    image_provider_api_key: str = ""  # API key of the image provider
    image_provider_model: str = "gpt-image-1"  # image model name
    image_usd_per_image: float = 0.04  # price per generated image (cost tracking)
    video_provider: Literal["local", "ragnarok"] = "local"  # local (ffmpeg) or ragnarok
    ragnarok_proxy_url: str = "http://127.0.0.1:8082"  # where ragnarok-proxy is (forwarding; RAGNAROK clip rendering)
    ragnarok_usd_per_second: float = 0.05  # price per second of RAGNAROK video (cost tracking)
    ragnarok_poll_seconds: float = 2.0  # how often a RAGNAROK-rendered clip is polled
    ragnarok_timeout_seconds: float = 600.0
    stt_url: str = ""  # speech-to-text provider for lyrics; empty = no lyrics
    ffmpeg_path: str = ""  # empty: system ffmpeg, else the imageio-ffmpeg binary

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of clips and the final video."""
        return RESOLUTIONS.get(self.video_resolution, (self.video_width, self.video_height))


RESOLUTIONS: dict[str, tuple[int, int]] = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080)}
