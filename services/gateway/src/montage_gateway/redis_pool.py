"""The gateway's Redis client: like ``montage_common.redis.create_redis`` but with a *blocking* pool.

Thousands of SSE connections can open or close at once; with a non-blocking pool the burst would
fail with "Too many connections". Here a request waits (up to ``pool_wait_seconds``) for one of
``max_connections`` pooled connections instead; each command keeps the 2 s operation timeout.
"""

from __future__ import annotations

from montage_common.redis import OPERATION_TIMEOUT
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def create_gateway_redis(url: str, *, max_connections: int, pool_wait_seconds: float = 10.0) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_wait_seconds,
        socket_timeout=OPERATION_TIMEOUT,
        socket_connect_timeout=OPERATION_TIMEOUT,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        decode_responses=False,
    )
    return Redis.from_pool(pool)
