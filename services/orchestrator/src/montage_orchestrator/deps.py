"""What handlers, the pipeline and the sweepers share, built once in ``app.cleanup_ctx``."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web
from montage_common.redis import keys_for
from montage_common.storage import Storage
from montage_contracts.keys import Keys
from montage_streams import StreamProducer
from redis.asyncio import Redis

from montage_orchestrator.cache import StatusCache
from montage_orchestrator.outbox import Outbox
from montage_orchestrator.settings import OrchestratorSettings
from montage_orchestrator.user_events import UserEventRelay


@dataclass(slots=True)
class Forecasts:
    """The door's newest reading of the system and when it began (``admission.Reading``), kept for
    ``admission.FORECAST_CACHE_SECONDS``; one begun before the last :meth:`drop` (a job became final
    here) is read again."""

    latest: tuple[Any, float] | None = None
    dropped_at: float = -math.inf  # time.monotonic() of the last drop

    def drop(self) -> None:
        self.dropped_at = time.monotonic()


@dataclass(frozen=True, slots=True)
class Deps:
    settings: OrchestratorSettings
    pool: asyncpg.Pool
    redis: Redis
    keys: Keys
    storage: Storage
    cache: StatusCache
    outbox: Outbox
    producer: StreamProducer
    user_events: UserEventRelay  # copies job events into their users' logs (``GET /api/v1/events``)
    # Set when a slot may have freed (a job became final): the turn-giver wakes (``admission.run``).
    turns_due: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when a job with a webhook became final: the delivery loop wakes (``webhooks.Sender``).
    webhooks_due: asyncio.Event = field(default_factory=asyncio.Event)
    forecasts: Forecasts = field(default_factory=Forecasts)

    @classmethod
    def build(cls, settings: OrchestratorSettings, pool: asyncpg.Pool, redis: Redis, storage: Storage) -> Deps:
        keys = keys_for(settings)
        producer = StreamProducer(redis)
        user_events = UserEventRelay(pool, redis, keys)
        return cls(
            settings=settings,
            pool=pool,
            redis=redis,
            keys=keys,
            storage=storage,
            cache=StatusCache(redis, keys, settings.status_cache_seconds),
            outbox=Outbox(pool, producer, on_sent=user_events.notice),
            producer=producer,
            user_events=user_events,
        )


DEPS: web.AppKey[Deps] = web.AppKey("orchestrator_deps", Deps)
