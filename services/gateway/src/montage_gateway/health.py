"""``GET /api/v1/health`` (no auth): the orchestrator's ``/internal/health`` plus our own Redis ping."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
from aiohttp import web
from montage_common.web import REQUEST_ID, json_response
from montage_contracts.api import Healthy, InternalHealth, Unhealthy, timestamp
from montage_contracts.errors import SERVICE_UNAVAILABLE_RETRY_AFTER, MontageError
from montage_contracts.routes import route
from redis.asyncio import Redis

from montage_gateway.proxy import Forwarder, Upstream

_decoder = msgspec.json.Decoder(InternalHealth)
INTERNAL_HEALTH = route("getInternalHealth")


class HealthHandler:
    def __init__(self, forwarder: Forwarder, orchestrator: Upstream, redis: Redis, *, timeout: float = 3.0) -> None:
        self.forwarder = forwarder
        self.orchestrator = orchestrator
        self.redis = redis
        self.timeout = timeout

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
        redis_ok, internal = await asyncio.gather(self._redis_ok(), self._orchestrator(request[REQUEST_ID]))
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
                Unhealthy(status="unhealthy", timestamp=now, issues=issues),
                status=503,
                headers={"Retry-After": str(SERVICE_UNAVAILABLE_RETRY_AFTER)},
            )
        return json_response(
            Healthy(status="healthy", timestamp=now, queue=internal.queue, database="connected", redis="connected")
        )
