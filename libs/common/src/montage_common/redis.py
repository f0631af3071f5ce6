"""Redis client factory with the spec's 2 s operation timeout."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

OPERATION_TIMEOUT = 2.0


def create_redis(url: str, *, socket_timeout: float = OPERATION_TIMEOUT, max_connections: int = 64) -> Redis:
    """A pooled client. Blocking reads (XREADGROUP BLOCK) need ``socket_timeout`` above their block."""
    return Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=OPERATION_TIMEOUT,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        max_connections=max_connections,
        decode_responses=False,
    )
