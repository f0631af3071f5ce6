"""Settings: one frozen Struct per service, read from the environment once, in ``main()``.

Every field maps to the upper-cased environment variable of the same name
(``redis_url`` ← ``REDIS_URL``). Values are converted by msgspec, so ``"3"`` becomes
``3`` and ``"true"`` becomes ``True``. This module is the only place that reads
``os.environ``; everything else receives a settings object.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Literal, TypeVar

import msgspec
from montage_contracts.pricing import PriceCard, price_table
from msgspec import Meta

Environment = Literal["development", "staging", "production"]

S = TypeVar("S", bound=msgspec.Struct)


class CommonSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Settings every service shares."""

    environment: Annotated[
        Environment,
        Meta(description="development (cheap local models, $50 cap, dev tokens) | staging | production ($2000 cap)"),
    ] = "development"
    log_level: Annotated[str, Meta(description="debug | info | warning | error")] = "info"
    log_format: Annotated[
        Literal["auto", "json", "console"], Meta(description="auto: console on a terminal, else JSON")
    ] = "auto"
    redis_url: Annotated[str, Meta(description="streams, rate limits, events, caches")] = "redis://127.0.0.1:6379/0"
    database_url: Annotated[str, Meta(description="the system of record")] = (
        "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    redis_namespace: Annotated[
        str, Meta(description="Prefix for every Redis key, so several deployments (or tests) can share one Redis.")
    ] = "montage"
    redis_sentinels: Annotated[
        str,
        Meta(
            description="host:port,host:port of Redis Sentinels: clients then follow the primary they name"
            " (REDIS_URL gives only password, database and TLS); empty: REDIS_URL is the server"
        ),
    ] = ""
    redis_sentinel_master: Annotated[str, Meta(description="the primary's name at the Sentinels")] = "montage"
    redis_cluster: Annotated[
        bool, Meta(description="REDIS_URL is a node of a Redis Cluster (7+): cluster client, sharded live events")
    ] = False
    redis_partitions: Annotated[
        int,
        Meta(
            description="pipeline partitions: a job's keys share its partition's hash tag; on a cluster,"
            " at least the number of primaries (every service must use the same value)"
        ),
    ] = 1
    job_heartbeat_seconds: Annotated[
        float,
        Meta(
            description="how often a worker reports a running stage alive; the orchestrator re-dispatches"
            " a stage Redis lost after twice this long without a report (same value everywhere)"
        ),
    ] = 5.0
    internal_secret: Annotated[
        str, Meta(description="Shared secret proving a request comes from the gateway (X-Montage-Internal).")
    ] = "dev-internal-secret"
    host: Annotated[str, Meta(description="listen address (0.0.0.0 in containers)")] = "127.0.0.1"
    port: Annotated[int, Meta(description="listen port of the API (each service has its own default)")] = 8080
    ops_port: Annotated[
        int, Meta(description="Listen port of /healthz, /readyz and /metrics (never on the API port); 0: none.")
    ] = 0
    claim_idle_ms: Annotated[
        int, Meta(description="an entry left unacknowledged this long by a dead consumer is taken over")
    ] = 30_000
    shutdown_grace_seconds: Annotated[float, Meta(description="in-flight work gets this long after SIGTERM")] = 20.0
    http_keepalive_timeout_seconds: Annotated[
        float,
        Meta(
            gt=0,
            description="an HTTP connection with no request in progress (or a socket that sends nothing) is"
            " closed after this long; behind a load balancer, keep it above the balancer's idle timeout",
        ),
    ] = 75.0
    http_header_timeout_seconds: Annotated[
        float,
        Meta(
            gt=0,
            description="a request's line and headers must arrive within this long of its first byte,"
            " else 408 and the connection is closed (slow clients)",
        ),
    ] = 10.0
    dependency_probe_seconds: Annotated[
        float,
        Meta(
            gt=0,
            description="How often each service pings Redis and Postgres for montage_dependency_up / _ping_seconds (each ping bounded by 2 s).",
        ),
    ] = 15.0
    storage_backend: Annotated[
        Literal["local", "supabase"],
        Meta(description='Storage: "local" (a directory, HMAC-signed URLs served by the gateway) or "supabase".'),
    ] = "local"
    storage_dir: Annotated[str, Meta(description="root of the local storage backend")] = "var/storage"
    storage_signing_key: Annotated[str, Meta(description="HMAC key of local signed URLs")] = "dev-storage-signing-key"
    public_base_url: Annotated[str, Meta(description="the gateway as browsers reach it (signed URLs)")] = (
        "http://127.0.0.1:8080"
    )
    supabase_url: Annotated[str, Meta(description='https://<ref>.supabase.co (storage backend "supabase")')] = ""
    supabase_service_key: Annotated[str, Meta(description="service-role key for Supabase Storage")] = ""

    @property
    def is_production(self) -> bool:
        return self.environment in ("production", "staging")


class PricingSettings(CommonSettings, frozen=True, kw_only=True):
    """What prices a job: which provider each capability uses, their price tables, the local
    compute rate, and the frame size and clip lengths the planned work follows. The stage workers
    price each call with them and the orchestrator's pre-flight estimate reads the same variables
    (``montage_contracts.pricing``), so both services must be given the same values."""

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
    clip_min_seconds: Annotated[
        float, Meta(description="shortest clip the planner makes (section changes may fold shorter ones)")
    ] = 3.0
    clip_max_seconds: Annotated[float, Meta(description="longest clip the planner makes")] = 8.0
    local_compute_rate_usd_per_second: Annotated[
        float,
        Meta(description="Local work is priced by measured compute seconds at this rate, so budgets are real offline."),
    ] = 0.002
    llm_url: Annotated[
        str,
        Meta(
            description="Text provider (scene planning, clip prompts): an OpenAI-compatible base URL, e.g."
            " https://api.openai.com/v1 or http://127.0.0.1:11434/v1 (Ollama); empty: local planner and prompts"
        ),
    ] = ""
    llm_model: Annotated[str, Meta(description="chat model of the text provider (structured JSON output)")] = (
        "gpt-5.4-mini"
    )
    stt_url: Annotated[
        str,
        Meta(
            description="Lyrics: an OpenAI-compatible base URL serving /audio/transcriptions (verbose_json with"
            " word timestamps); empty: no lyrics"
        ),
    ] = ""
    stt_model: Annotated[
        str, Meta(description="transcription model (must support word timestamps, e.g. whisper-1)")
    ] = "whisper-1"
    image_provider_url: Annotated[
        str,
        Meta(description="Reference stills: an OpenAI-compatible base URL serving /images/generations; empty: local"),
    ] = ""
    image_provider_model: Annotated[str, Meta(description="image model name")] = "gpt-image-2"
    video_provider: Annotated[
        Literal["local", "ragnarok", "runway"],
        Meta(
            description="clips: local (ffmpeg animates the stills), ragnarok (RAGNAROK through ragnarok-proxy) or"
            " runway (Runway's image-to-video API: each scene's still animated by RUNWAY_MODEL)"
        ),
    ] = "local"
    runway_usd_per_second: Annotated[
        float,
        Meta(
            description="price per second of Runway video: what a Runway clip reserves and the estimate counts"
            " (gen4_turbo: 5 credits a second at $0.01, checked 2026-12-07, docs/providers.md); the cost recorded"
            " is the task's reported credits times RUNWAY_USD_PER_CREDIT"
        ),
    ] = 0.05
    ragnarok_usd_per_second: Annotated[
        float,
        Meta(
            description="price per second of RAGNAROK video: what a clip reserves and the estimate counts (the cost"
            " recorded is RAGNAROK's cost_usd, this times the clip's length when it reports none)"
        ),
    ] = 0.05
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

    @property
    def price_card(self) -> PriceCard:
        """The configured providers and prices (a capability whose URL is empty is local)."""
        width, height = self.frame_size
        return PriceCard(
            llm_model=self.llm_model if self.llm_url else "",
            llm_prices=price_table(self.llm_prices, 2),
            stt_model=self.stt_model if self.stt_url else "",
            stt_prices=price_table(self.stt_prices, 1),
            image_model=self.image_provider_model if self.image_provider_url else "",
            image_prices=price_table(self.image_prices, 1),
            video_provider=self.video_provider,
            ragnarok_usd_per_second=self.ragnarok_usd_per_second,
            runway_usd_per_second=self.runway_usd_per_second,
            local_compute_rate=self.local_compute_rate_usd_per_second,
            clip_min_seconds=self.clip_min_seconds,
            clip_max_seconds=self.clip_max_seconds,
            width=width,
            height=height,
            fps=self.video_fps,
        )


RESOLUTIONS: dict[str, tuple[int, int]] = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080)}


def load(cls: type[S], env: Mapping[str, str] | None = None, **overrides: object) -> S:
    """Build ``cls`` from the environment (upper-cased field names) plus explicit overrides."""
    source = os.environ if env is None else env
    fields = {f.name for f in msgspec.structs.fields(cls)}
    values: dict[str, object] = {}
    for name in fields:
        raw = source.get(name.upper())
        if raw is not None and raw != "":
            values[name] = raw
    values.update(overrides)
    try:
        settings = msgspec.convert(values, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise SystemExit(f"invalid configuration: {exc}") from None
    if isinstance(settings, CommonSettings) and settings.is_production:
        for name in _DEV_ONLY_DEFAULTS:
            if getattr(settings, name) == getattr(CommonSettings(), name):
                raise SystemExit(f"invalid configuration: {name.upper()} must be set outside development")
    return settings


# Secrets whose built-in values exist only so development needs no setup.
_DEV_ONLY_DEFAULTS = ("internal_secret", "storage_signing_key")
