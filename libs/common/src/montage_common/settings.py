"""Settings: one frozen Struct per service, read from the environment once, in ``main()``.

Every field maps to the upper-cased environment variable of the same name
(``redis_url`` ← ``REDIS_URL``). Values are converted by msgspec, so ``"3"`` becomes
``3`` and ``"true"`` becomes ``True``. This module is the only place that reads
``os.environ``; everything else receives a settings object.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal, TypeVar

import msgspec

Environment = Literal["development", "staging", "production"]

S = TypeVar("S", bound=msgspec.Struct)


class CommonSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Settings every service shares."""

    # development (cheap local models, $50 cap, dev tokens) | staging | production ($2000 cap)
    environment: Environment = "development"
    log_level: str = "info"  # debug | info | warning | error
    log_format: Literal["auto", "json", "console"] = "auto"  # auto: console on a terminal, else JSON
    redis_url: str = "redis://127.0.0.1:6379/0"  # streams, rate limits, events, caches
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"  # the system of record
    # Prefix for every Redis key, so several deployments (or tests) can share one Redis.
    redis_namespace: str = "montage"
    # Shared secret proving a request comes from the gateway (X-Montage-Internal).
    internal_secret: str = "dev-internal-secret"
    host: str = "127.0.0.1"  # listen address (0.0.0.0 in containers)
    port: int = 8080  # listen port of the API (each service has its own default)
    # Listen port of /healthz, /readyz and /metrics (never on the API port); 0: none.
    ops_port: int = 0
    shutdown_grace_seconds: float = 20.0  # in-flight work gets this long after SIGTERM
    # Storage: "local" (a directory, HMAC-signed URLs served by the gateway) or "supabase".
    storage_backend: Literal["local", "supabase"] = "local"
    storage_dir: str = "var/storage"  # root of the local storage backend
    storage_signing_key: str = "dev-storage-signing-key"  # HMAC key of local signed URLs
    public_base_url: str = "http://127.0.0.1:8080"  # the gateway as browsers reach it (signed URLs)
    supabase_url: str = ""  # https://<ref>.supabase.co (storage backend "supabase")
    supabase_service_key: str = ""  # service-role key for Supabase Storage

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
