"""What handlers, the pipeline and the sweepers share, built once in ``app.cleanup_ctx``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

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
    # Set when a slot may have freed (a job became final): the turn-giver wakes (``admission.run``).
    turns_due: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when a job with a webhook became final: the delivery loop wakes (``webhooks.Sender``).
    webhooks_due: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def build(cls, settings: OrchestratorSettings, pool: asyncpg.Pool, redis: Redis, storage: Storage) -> Deps:
        keys = keys_for(settings)
        producer = StreamProducer(redis)
        return cls(
            settings=settings,
            pool=pool,
            redis=redis,
            keys=keys,
            storage=storage,
            cache=StatusCache(redis, keys, settings.status_cache_seconds),
            outbox=Outbox(pool, producer),
            producer=producer,
        )


DEPS: web.AppKey[Deps] = web.AppKey("orchestrator_deps", Deps)
