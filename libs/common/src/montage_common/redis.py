"""Redis clients with the spec's 2 s operation timeout: one Redis, a Sentinel-managed primary, or
a Redis Cluster, decided by the settings (the one place that knows).

- ``REDIS_URL`` alone: a pooled client of that server. A restarted server is reconnected to by
  itself (every command retries connection errors with a short backoff; a caller that still sees
  one answers 503).
- ``REDIS_SENTINELS`` (``host:port,host:port``) and ``REDIS_SENTINEL_MASTER``: every new
  connection asks the Sentinels where the primary is, and a connection to a demoted primary is
  dropped on its first ``READONLY`` answer, so clients follow a failover without a restart.
  ``REDIS_URL`` then supplies only the password, database and TLS.
- ``REDIS_CLUSTER=true``: a :class:`redis.asyncio.cluster.RedisCluster` seeded from
  ``REDIS_URL`` (any node). Every key one script touches shares a hash tag (see
  :mod:`montage_contracts.keys`). It is returned typed as :class:`Redis`: the commands Montage
  uses are the same on both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from montage_contracts.keys import Keys
from montage_streams import REDIS_DOWN
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["OPERATION_TIMEOUT", "REDIS_DOWN", "RedisTarget", "create_redis", "keys_for", "ready", "target_of"]

OPERATION_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where Redis is: a URL, plus Sentinels or cluster mode (from the settings)."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = "montage"
    cluster: bool = False

    @property
    def password(self) -> str | None:
        p = urlsplit(self.url).password
        return unquote(p) if p else None

    @property
    def username(self) -> str | None:
        u = urlsplit(self.url).username
        return unquote(u) if u else None

    @property
    def db(self) -> int:
        path = urlsplit(self.url).path.strip("/")
        return int(path) if path.isdigit() else 0

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "rediss"


def parse_sentinels(value: str) -> tuple[tuple[str, int], ...]:
    """``"host:port,host:port"`` → ``((host, port), ...)`` (port 26379 when omitted)."""
    out: list[tuple[str, int]] = []
    for raw in value.split(","):
        part = raw.strip()
        if not part:
            continue
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "26379")
        out.append((host.strip("[]"), int(port)))
    return tuple(out)


def target_of(settings: Any) -> RedisTarget:
    """The :class:`RedisTarget` of a settings object (``CommonSettings`` or any with ``redis_url``)."""
    return RedisTarget(
        url=settings.redis_url,
        sentinels=parse_sentinels(getattr(settings, "redis_sentinels", "") or ""),
        sentinel_master=getattr(settings, "redis_sentinel_master", "") or "montage",
        cluster=bool(getattr(settings, "redis_cluster", False)),
    )


def keys_for(settings: Any) -> Keys:
    """The key layout of a deployment: namespace, partitions, and sharded live events on a cluster."""
    return Keys(
        settings.redis_namespace,
        partitions=max(int(getattr(settings, "redis_partitions", 1) or 1), 1),
        sharded_events=bool(getattr(settings, "redis_cluster", False)),
    )


def _sentinel(target: RedisTarget) -> Sentinel:
    timeouts = {"socket_timeout": OPERATION_TIMEOUT, "socket_connect_timeout": OPERATION_TIMEOUT}
    return Sentinel(list(target.sentinels), sentinel_kwargs=timeouts)  # type: ignore[no-untyped-call]


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel-managed pool whose callers wait for a free connection (like the plain blocking one)."""


def create_redis(
    where: str | RedisTarget,
    *,
    socket_timeout: float = OPERATION_TIMEOUT,
    max_connections: int = 64,
    pool_wait_seconds: float | None = None,
) -> Redis:
    """A pooled client. Blocking reads (XREADGROUP BLOCK) need ``socket_timeout`` above their block.

    With ``pool_wait_seconds`` the pool is a blocking one: when every connection is busy a caller
    waits up to that long for one instead of failing (bursts of thousands of SSE clients).
    """
    target = RedisTarget(where) if isinstance(where, str) else where
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": OPERATION_TIMEOUT,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "decode_responses": False,
    }
    if target.cluster:
        cluster = RedisCluster.from_url(target.url, max_connections=max_connections, **common)
        return cast(Redis, cluster)
    extra: dict[str, float] = {}
    if target.sentinels:
        sentinel = _sentinel(target)
        sentinel_pool: type[SentinelConnectionPool] = SentinelConnectionPool
        if pool_wait_seconds is not None:
            sentinel_pool, extra = _BlockingSentinelPool, {"timeout": pool_wait_seconds}
        spool = sentinel_pool(
            target.sentinel_master,
            sentinel,
            max_connections=max_connections,
            health_check_interval=15,
            username=target.username,
            password=target.password,
            db=target.db,
            ssl=target.tls,
            **common,
            **extra,
        )
        return Redis.from_pool(spool)
    pool_class: type[ConnectionPool] = ConnectionPool
    if pool_wait_seconds is not None:
        pool_class, extra = BlockingConnectionPool, {"timeout": pool_wait_seconds}
    pool = pool_class.from_url(target.url, max_connections=max_connections, health_check_interval=15, **common, **extra)
    return Redis.from_pool(pool)


async def ready(redis: Redis) -> None:
    """Connect now: a cluster client reads the slot map and opens its nodes before many tasks
    share it (redis-py's lazy first connection races when dozens of consumers start at once).
    Best effort: with Redis down, callers start anyway and retry as they always do."""
    try:
        if isinstance(redis, RedisCluster):
            await redis.initialize()
        else:
            await redis.ping()
    except (RedisError, OSError):  # REDIS_DOWN and the rest of what redis-py raises
        pass


async def primary_address(target: RedisTarget) -> tuple[str, int]:
    """Where the primary is now: from the Sentinels, else the URL's host and port."""
    if target.sentinels:
        sentinel = _sentinel(target)
        try:
            host, port = await sentinel.discover_master(target.sentinel_master)
        finally:
            for s in sentinel.sentinels:
                await s.aclose()
        return str(host), int(port)
    parts = urlsplit(target.url)
    return parts.hostname or "127.0.0.1", parts.port or 6379
