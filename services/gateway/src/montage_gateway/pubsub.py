"""One Redis connection in subscriber mode, shared by every SSE client of the process.

A small RESP client of its own (parsing with hiredis) rather than redis-py's ``PubSub``, for two
guarantees the fan-out needs: :meth:`Subscriber.subscribe` returns only once Redis has confirmed
the subscription (so a replay read afterwards cannot miss an event published in between), and a
lost connection is reported (``on_reset``) instead of silently resubscribed with a gap.
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
        url: str,
        on_message: MessageHandler,
        on_reset: Callable[[], None],
        *,
        connect_timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.on_message = on_message
        self.on_reset = on_reset
        self.connect_timeout = connect_timeout
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
            reader, writer = await asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 6379, ssl=ctx)
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
                if kind == b"message":
                    self.on_message(msg[1], msg[2])
                elif kind == b"subscribe":
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
        writer.write(encode_command(b"SUBSCRIBE", channel))  # ordered with UNSUBSCRIBEs by the loop
        try:
            await asyncio.wait_for(asyncio.shield(fut), wait_seconds)
        except TimeoutError:
            raise SubscriberUnavailable from None

    def unsubscribe(self, channel: bytes) -> None:
        if self._writer is not None:
            self._writer.write(encode_command(b"UNSUBSCRIBE", channel))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def close(self) -> None:
        self._closing = True
        if self._writer is not None:
            self._writer.close()
