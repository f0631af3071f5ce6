"""One Redis connection in subscriber mode, shared by every SSE client of the process.

A small RESP client of its own (parsing with hiredis) rather than redis-py's ``PubSub``, for two
guarantees the fan-out needs: :meth:`Subscriber.subscribe` returns only once Redis has confirmed
the subscription (so a replay read afterwards cannot miss an event published in between), and a
lost connection is reported (``on_reset``) instead of silently resubscribed with a gap.

Each connection goes to the primary as it is *then*: with ``REDIS_SENTINELS`` the Sentinels are
asked first (``montage_common.redis.primary_address``), so after a failover the reconnect finds
the new primary by itself.

On Redis Cluster (``REDIS_CLUSTER=true``) live events are shard channels (``SPUBLISH`` in the
hand-off script, on the node owning the job's partition): :class:`ShardedSubscriber` keeps one
``SSUBSCRIBE`` connection per primary, read from ``CLUSTER SLOTS``, and sends each channel to
the node owning its slot. A lost node connection resets every client (they resume with
``Last-Event-ID``) and the map is read again, which also covers a failover or resharding.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import hiredis
import structlog
from montage_common.redis import RedisTarget, primary_address
from montage_contracts.keys import key_slot
from redis.exceptions import RedisError

log = structlog.get_logger()

MessageHandler = Callable[[bytes, bytes], None]


def encode_command(*parts: bytes | str) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class SubscriberUnavailable(Exception):
    """The subscriber connection is down."""


class Subscriber:
    """Runs one subscriber connection; reconnects with backoff until :meth:`close`."""

    def __init__(
        self,
        url: str | RedisTarget,
        on_message: MessageHandler,
        on_reset: Callable[[], None],
        *,
        connect_timeout: float = 2.0,
        sharded: bool = False,
    ) -> None:
        self.target = RedisTarget(url) if isinstance(url, str) else url
        self.url = self.target.url
        self.on_message = on_message
        self.on_reset = on_reset
        self.connect_timeout = connect_timeout
        self.sharded = sharded  # SSUBSCRIBE / SUNSUBSCRIBE (shard channels, Redis 7)
        self._kinds = (b"smessage", b"ssubscribe") if sharded else (b"message", b"subscribe")
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._pending: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._closing = False

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            reader, writer = await asyncio.open_unix_connection(parts.path)
        else:
            ctx = ssl.create_default_context() if parts.scheme == "rediss" else None
            try:
                host, port = await primary_address(self.target)
            except RedisError as exc:  # no Sentinel answers, or none knows the primary
                raise ConnectionError(f"no primary: {type(exc).__name__}") from None
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
        if parts.password:
            auth = [unquote(parts.username), unquote(parts.password)] if parts.username else [unquote(parts.password)]
            writer.write(encode_command("AUTH", *auth))
            await writer.drain()
            parser = hiredis.Reader()
            while (reply := parser.gets()) is False:
                data = await reader.read(4096)
                if not data:
                    raise ConnectionError("closed during AUTH")
                parser.feed(data)
            if isinstance(reply, hiredis.ReplyError):
                raise ConnectionError("AUTH refused")
        return reader, writer

    async def run(self) -> None:
        """Connect, read, and reconnect after failures (cancel to stop)."""
        delay = 0.1
        while not self._closing:
            try:
                reader, writer = await asyncio.wait_for(self._open(), self.connect_timeout)
            except (OSError, TimeoutError, ConnectionError) as exc:
                log.warning("pubsub_connect_failed", error=type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1
            self._writer = writer
            self._connected.set()
            log.info("pubsub_connected")
            try:
                await self._read(reader)
            except (OSError, ConnectionError, hiredis.ProtocolError) as exc:
                log.warning("pubsub_connection_lost", error=type(exc).__name__)
            finally:
                self._connected.clear()
                self._writer = None
                writer.close()
                self._fail_pending()
                if not self._closing:
                    self.on_reset()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        parser = hiredis.Reader()
        while True:
            data = await reader.read(256 * 1024)
            if not data:
                raise ConnectionError("closed by server")
            parser.feed(data)
            while (msg := parser.gets()) is not False:
                if not isinstance(msg, list) or len(msg) < 3:
                    continue
                kind = msg[0]
                if kind == self._kinds[0]:
                    self.on_message(msg[1], msg[2])
                elif kind == self._kinds[1]:
                    waiting = self._pending.get(msg[1])
                    if waiting:
                        fut = waiting.popleft()
                        if not waiting:
                            del self._pending[msg[1]]
                        if not fut.done():
                            fut.set_result(None)

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for waiting in pending.values():
            for fut in waiting:
                if not fut.done():
                    fut.set_exception(SubscriberUnavailable())

    async def subscribe(self, channel: bytes, wait_seconds: float = 2.0) -> None:
        """Subscribe and wait for Redis's confirmation."""
        if not self._connected.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), wait_seconds)
        writer = self._writer
        if writer is None:
            raise SubscriberUnavailable
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(channel, deque()).append(fut)
        verb = b"SSUBSCRIBE" if self.sharded else b"SUBSCRIBE"
        writer.write(encode_command(verb, channel))  # ordered with UNSUBSCRIBEs by the loop
        try:
            await asyncio.wait_for(asyncio.shield(fut), wait_seconds)
        except TimeoutError:
            raise SubscriberUnavailable from None

    def unsubscribe(self, channel: bytes) -> None:
        if self._writer is not None:
            self._writer.write(encode_command(b"SUNSUBSCRIBE" if self.sharded else b"UNSUBSCRIBE", channel))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def close(self) -> None:
        self._closing = True
        if self._writer is not None:
            self._writer.close()


async def _cluster_slots(target: RedisTarget, limit: float) -> list[tuple[int, int, str, int]]:
    """``CLUSTER SLOTS`` of the seed node: ``(first slot, last slot, primary host, port)``."""
    parts = urlsplit(target.url)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 6379,
                                ssl=ssl.create_default_context() if target.tls else None),
        limit,
    )  # fmt: skip
    try:
        if target.password:
            auth = [target.username, target.password] if target.username else [target.password]
            writer.write(encode_command("AUTH", *auth))
        writer.write(encode_command("CLUSTER", "SLOTS"))
        await writer.drain()
        parser = hiredis.Reader()
        replies: list[object] = []
        while len(replies) < (2 if target.password else 1):
            data = await asyncio.wait_for(reader.read(65536), limit)
            if not data:
                raise ConnectionError("closed during CLUSTER SLOTS")
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                replies.append(reply)
        slots = replies[-1]
        if not isinstance(slots, list):
            raise ConnectionError("CLUSTER SLOTS refused")
        return [(int(r[0]), int(r[1]), r[2][0].decode(), int(r[2][1])) for r in slots]
    finally:
        writer.close()


class ShardedSubscriber:
    """Shard-channel subscriptions across a cluster: one :class:`Subscriber` per primary."""

    def __init__(
        self,
        target: RedisTarget,
        on_message: MessageHandler,
        on_reset: Callable[[], None],
        *,
        connect_timeout: float = 2.0,
    ) -> None:
        self.target = target
        self.on_message = on_message
        self.on_reset = on_reset
        self.connect_timeout = connect_timeout
        self._ranges: list[tuple[int, int, str]] = []
        self._nodes: dict[str, Subscriber] = {}
        self._ready = asyncio.Event()
        self._closing = False
        self._changed = asyncio.Event()

    def _node_url(self, host: str, port: int) -> str:
        parts = urlsplit(self.target.url)
        auth = parts.netloc.rpartition("@")[0]
        return f"{parts.scheme}://{auth + '@' if auth else ''}{host}:{port}/0"

    def _reset(self) -> None:
        self._changed.set()  # read the slot map again: a failover or resharding may be why
        self.on_reset()

    async def run(self) -> None:
        """Read the slot map, run one subscriber per primary; start over when a node drops."""
        delay = 0.1
        while not self._closing:
            try:
                slots = await _cluster_slots(self.target, self.connect_timeout)
            except (OSError, TimeoutError, ConnectionError, IndexError, ValueError) as exc:
                log.warning("pubsub_cluster_map_failed", error=type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1
            self._ranges = [(lo, hi, self._node_url(h, p)) for lo, hi, h, p in slots]
            urls = sorted({u for _, _, u in self._ranges})
            self._nodes = {
                u: Subscriber(u, self.on_message, self._reset, connect_timeout=self.connect_timeout, sharded=True)
                for u in urls
            }
            self._changed.clear()
            self._ready.set()
            runs = [asyncio.create_task(n.run()) for n in self._nodes.values()]
            try:
                await self._changed.wait()
            finally:
                self._ready.clear()
                for n in self._nodes.values():
                    n.close()
                for t in runs:
                    t.cancel()
                await asyncio.gather(*runs, return_exceptions=True)

    def _node(self, channel: bytes) -> Subscriber | None:
        slot = key_slot(channel.decode())
        for lo, hi, url in self._ranges:
            if lo <= slot <= hi:
                return self._nodes.get(url)
        return None

    async def subscribe(self, channel: bytes, wait_seconds: float = 2.0) -> None:
        if not self._ready.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait_seconds)
        node = self._node(channel)
        if node is None:
            raise SubscriberUnavailable
        await node.subscribe(channel, wait_seconds)

    def unsubscribe(self, channel: bytes) -> None:
        node = self._node(channel)
        if node is not None:
            node.unsubscribe(channel)

    @property
    def connected(self) -> bool:
        return self._ready.is_set() and all(n.connected for n in self._nodes.values())

    def close(self) -> None:
        self._closing = True
        self._changed.set()


def make_subscriber(
    where: str | RedisTarget, on_message: MessageHandler, on_reset: Callable[[], None]
) -> Subscriber | ShardedSubscriber:
    """The subscriber a deployment needs: sharded across a cluster, else one connection."""
    target = RedisTarget(where) if isinstance(where, str) else where
    if target.cluster:
        return ShardedSubscriber(target, on_message, on_reset)
    return Subscriber(target, on_message, on_reset)
