"""``GET /api/v1/health`` (no auth): the orchestrator's ``/internal/health`` plus our own Redis ping,
and each stage's provider readiness (:func:`provider_readiness`: what the stage workers announce
and record of their calls in ``keys.provider_status``; no provider is called from here)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web
from montage_common.web import REQUEST_ID, json_response
from montage_contracts.api import Healthy, InternalHealth, ProviderReadiness, ProviderState, Unhealthy, timestamp
from montage_contracts.errors import SERVICE_UNAVAILABLE_RETRY_AFTER, MontageError
from montage_contracts.keys import Keys
from montage_contracts.pipeline import STAGES
from montage_contracts.routes import route
from redis.asyncio import Redis

from montage_gateway.proxy import Forwarder, Upstream

_decoder = msgspec.json.Decoder(InternalHealth)
INTERNAL_HEALTH = route("getInternalHealth")


def _when(raw: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(raw), UTC)
    except (TypeError, ValueError):
        return None


def provider_readiness(status: dict[str, str]) -> list[ProviderReadiness]:
    """Each stage's provider from the fields of ``keys.provider_status``: ``stage.<stage>`` (what its
    workers announced at start) and ``<provider>.last_success`` / ``.last_failure`` / ``.last_error``."""
    out: list[ProviderReadiness] = []
    for stage in STAGES:
        raw = status.get(f"stage.{stage}")
        if raw is None:
            continue
        try:
            announced = json.loads(raw)
        except ValueError:
            continue
        provider, configured = str(announced.get("provider") or "local"), bool(announced.get("configured"))
        success, failure = _when(status.get(f"{provider}.last_success")), _when(status.get(f"{provider}.last_failure"))
        state: ProviderState
        if provider in ("local", "none"):
            state = "local"
        elif not configured:
            state = "unconfigured"
        elif success is None and failure is None:
            state = "ready"
        elif failure is not None and (success is None or failure >= success):
            state = "failing"
        else:
            state = "answering"
        out.append(
            ProviderReadiness(
                stage=stage,
                provider=provider,
                configured=configured,
                setting=str(announced.get("setting") or ""),
                state=state,
                last_success=timestamp(success) if success else None,
                last_failure=timestamp(failure) if failure else None,
                last_error=status.get(f"{provider}.last_error") if failure is not None else None,
            )
        )
    return out


class HealthHandler:
    def __init__(
        self, forwarder: Forwarder, orchestrator: Upstream, redis: Redis, keys: Keys | None = None, *,
        timeout: float = 3.0,
    ) -> None:  # fmt: skip
        self.forwarder = forwarder
        self.orchestrator = orchestrator
        self.redis = redis
        self.keys = keys or Keys()
        self.timeout = timeout

    async def _providers(self) -> list[ProviderReadiness]:
        raw: dict[Any, Any] = {}
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timeout):
                raw = await self.redis.hgetall(self.keys.provider_status())
        text = {
            (k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if isinstance(v, bytes) else str(v))
            for k, v in raw.items()
        }
        return provider_readiness(text)

    async def _redis_ok(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                await self.redis.ping()
            return True
        except Exception:
            return False

    async def _orchestrator(self, request_id: str) -> InternalHealth | None:
        try:
            reply = await self.forwarder.call(
                self.orchestrator,
                "GET",
                INTERNAL_HEALTH.path,
                request_id=request_id,
                user_id=None,
                time_limit=self.timeout,
            )
            body = _decoder.decode(reply.body)
        except (MontageError, msgspec.DecodeError):
            return None
        return body if reply.status in (200, 503) else None

    async def health(self, request: web.Request) -> web.Response:
        redis_ok, internal, providers = await asyncio.gather(
            self._redis_ok(), self._orchestrator(request[REQUEST_ID]), self._providers()
        )
        now = timestamp(datetime.now(UTC))
        issues: list[str] = []
        if internal is None:
            issues.append("orchestrator unreachable")
        else:
            issues.extend(internal.issues)
        if not redis_ok and "redis connection failed" not in issues:
            issues.append("redis connection failed")
        if issues or internal is None:
            return json_response(
                Unhealthy(status="unhealthy", timestamp=now, issues=issues, providers=providers),
                status=503,
                headers={"Retry-After": str(SERVICE_UNAVAILABLE_RETRY_AFTER)},
            )
        return json_response(
            Healthy(
                status="healthy",
                timestamp=now,
                queue=internal.queue,
                database="connected",
                redis="connected",
                providers=providers,
            )
        )
