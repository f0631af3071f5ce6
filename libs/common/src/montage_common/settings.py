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
