"""Redis loses everything (FLUSHALL, a restart without persistence): consumers carry on alone."""

from __future__ import annotations

from montage_common.redis import create_redis
from montage_streams import Emit, StreamProducer
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.streams.conftest import Harness, RedisServer, wait_until


async def test_consumers_recover_from_flushall_and_redis_restart(harness: Harness, redis_server: RedisServer) -> None:
    own = create_redis(redis_server.url)
    h = Harness(own, harness.keys, redis_server.url, log_dir=harness.log_dir)
    try:
        await h.spawn("a")
        await h.spawn("b")
        producer = StreamProducer(own)

        async def produce(prefix: str) -> set[str]:
            mids = {f"{prefix}{i}" for i in range(5)}
            for mid in sorted(mids):
                await wait_until(lambda m=mid: _emit(producer, h, m), f"produce {mid}")  # type: ignore[misc]
            return mids

        first = await produce("first")
        assert await h.wait_outputs(first) == dict.fromkeys(first, 1)

        await own.flushall()
        again = await produce("flushed")
        assert await h.wait_outputs(again) == dict.fromkeys(again, 1)

        redis_server.kill()
        redis_server.start()  # same port, empty: the stream and its group are gone
        last = await produce("restarted")
        assert await h.wait_outputs(last) == dict.fromkeys(last, 1)
        assert all(p.poll() is None for p in h.procs.values())
    finally:
        h.kill_all()
        await own.aclose()


async def _emit(producer: StreamProducer, h: Harness, mid: str) -> bool:
    try:
        await producer.emit([Emit(h.stream, b"{}", message_id=mid)])
    except (RedisConnectionError, OSError):
        return False  # the server is restarting
    return True
