"""The gateway's container: its live components, reached by handlers through ``app[GATEWAY]``."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from redis.asyncio import Redis

from montage_gateway.auth import Authenticator
from montage_gateway.health import HealthHandler
from montage_gateway.hub import Hub
from montage_gateway.idempotency import IdempotentUploads
from montage_gateway.proxy import Forwarder, Upstream
from montage_gateway.ratelimit import JobRateLimiter, RequestGuard
from montage_gateway.settings import GatewaySettings
from montage_gateway.slots import ConnectionSlots
from montage_gateway.sse import StreamHandler


@dataclass
class Gateway:
    """The gateway's live components (one per app)."""

    settings: GatewaySettings
    redis: Redis
    auth: Authenticator
    guard: RequestGuard
    limiter: JobRateLimiter
    idempotency: IdempotentUploads
    forwarder: Forwarder
    orchestrator: Upstream
    ragnarok: Upstream
    hub: Hub
    slots: ConnectionSlots
    stream: StreamHandler
    health: HealthHandler


GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
