"""Redis client factory with the spec's 2 s operation timeout."""

from __future__ import annotations

from montage_streams import REDIS_DOWN
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["OPERATION_TIMEOUT", "REDIS_DOWN", "create_redis"]

OPERATION_TIMEOUT = 2.0


def create_redis(
    url: str,
    *,
    socket_timeout: float = OPERATION_TIMEOUT,
    max_connections: int = 64,
    pool_wait_seconds: float | None = None,
) -> Redis:
    """A pooled client. Blocking reads (XREADGROUP BLOCK) need ``socket_timeout`` above their block.

    With ``pool_wait_seconds`` the pool is a blocking one: when every connection is busy a caller
    waits up to that long for one instead of failing (bursts of thousands of SSE clients).
    """
    pool_class: type[ConnectionPool] = ConnectionPool
    extra: dict[str, float] = {}
    if pool_wait_seconds is not None:
        pool_class, extra = BlockingConnectionPool, {"timeout": pool_wait_seconds}
    pool = pool_class.from_url(
        url,
        max_connections=max_connections,
        socket_timeout=socket_timeout,
        socket_connect_timeout=OPERATION_TIMEOUT,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        decode_responses=False,
        **extra,
    )
    return Redis.from_pool(pool)
