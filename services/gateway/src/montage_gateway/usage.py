"""``GET /api/v1/usage``: the caller's job-creation window, active jobs and this month's spend.

The window is the gateway's: :meth:`JobRateLimiter.window` reads the limiter's own key by the same
rule the upload's ``acquire`` applies (one home, ``montage_gateway.ratelimit``). Active jobs and
money live in Postgres, which only the orchestrator touches: it answers ``GET /internal/usage``.
The two readings are taken concurrently; the answer carries the upload's ``RateLimit`` headers too.
"""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web
from montage_common.web import REQUEST_ID, json_response
from montage_contracts.api import InternalUsage, Usage, timestamp_ms
from montage_contracts.routes import route

from montage_gateway.auth import request_user
from montage_gateway.deps import GATEWAY, Gateway
from montage_gateway.errors import UpstreamUnavailable
from montage_gateway.ratelimit import ratelimit_headers

INTERNAL_USAGE = route("getInternalUsage")
_decoder = msgspec.json.Decoder(InternalUsage)


async def _stored(gw: Gateway, request_id: str, user: str) -> InternalUsage:
    reply = await gw.forwarder.call(gw.orchestrator, "GET", INTERNAL_USAGE.path, request_id=request_id, user_id=user)
    if reply.status != 200:
        raise UpstreamUnavailable(f"orchestrator answered {reply.status} for usage")
    try:
        return _decoder.decode(reply.body)
    except msgspec.DecodeError:
        raise UpstreamUnavailable("orchestrator answered an unreadable usage") from None


async def get_usage(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    user = request_user(request)
    window, stored = await asyncio.gather(gw.limiter.window(user), _stored(gw, request[REQUEST_ID], user))
    body = Usage(
        jobs_used=window.used,
        jobs_limit=window.limit,
        jobs_remaining=window.remaining,
        window_seconds=window.window_seconds,
        next_slot_at=None if window.next_slot_ms is None else timestamp_ms(window.next_slot_ms),
        retry_after=window.retry_after,
        active_jobs=stored.active_jobs,
        spent_this_month=stored.spent_this_month,
        month_start=stored.month_start,
    )
    headers = ratelimit_headers(window.limit, window.window_seconds, window.remaining, window.reset)
    return json_response(body, headers=headers)
