"""The per-process SSE fan-out hub.

One :class:`~montage_gateway.pubsub.Subscriber` connection serves every SSE client of the
process: a job's channel is subscribed when its first local client joins and unsubscribed when
its last one leaves. Each published event is parsed and rendered into SSE bytes once, then
pushed to the bounded queue of every local client of that job. A client whose queue overflows
(it does not read) is closed; it reconnects with ``Last-Event-ID`` and catches up from the log.
Heartbeats are one timer for all clients. A lost Redis connection closes every client, for the
same reason: reconnecting replays exactly what was missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
import structlog
from montage_common.events import id_key, parse_published
from montage_common.redis import RedisTarget
from montage_contracts.api import HeartbeatData, timestamp
from montage_contracts.events import encode_data, event_name
from montage_contracts.keys import Keys

from montage_gateway.metrics import SSE_DROPPED, SSE_SUBSCRIPTIONS
from montage_gateway.pubsub import make_subscriber

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class Frame:
    """One rendered SSE message; ``key`` orders job events (None: heartbeat or snapshot)."""

    data: bytes
    key: tuple[int, int] | None = None
    final: bool = False
    kind: str = "event"


def render(data: msgspec.Struct, entry_id: str | None = None) -> bytes:
    """One SSE message: ``event:`` (the payload's event name), ``id:`` when logged, ``data:``."""
    event = event_name(data)
    head = f"event: {event}\nid: {entry_id}\n" if entry_id else f"event: {event}\n"
    return head.encode() + b"data: " + encode_data(data) + b"\n\n"


def heartbeat_frame() -> Frame:
    return Frame(render(HeartbeatData(timestamp=timestamp(datetime.now(UTC)))), kind="heartbeat")


@dataclass(eq=False)
class Client:
    """One SSE connection's inbox; ``None`` in the queue means: close."""

    job_id: str
    queue: asyncio.Queue[Frame | None]
    close_reason: str = ""
    _close_timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def push(self, frame: Frame) -> None:
        if self.close_reason:
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.close("slow_client")

    def close(self, reason: str) -> None:
        if self.close_reason:
            return
        self.close_reason = reason
        while not self.queue.empty():  # make room for the sentinel
            self.queue.get_nowait()
        self.queue.put_nowait(None)

    def close_later(self, delay: float, reason: str = "job_finished") -> None:
        if self._close_timer is None:
            self._close_timer = asyncio.get_running_loop().call_later(delay, self.close, reason)

    def cancel_timer(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()


class Hub:
    """Fan-out of job events from one Redis subscriber connection to local SSE clients."""

    def __init__(
        self, redis_url: str | RedisTarget, keys: Keys, *, queue_size: int = 512, heartbeat_seconds: float = 30.0
    ) -> None:
        self.keys = keys
        self.queue_size = queue_size
        self.heartbeat_seconds = heartbeat_seconds
        self.subscriber = make_subscriber(redis_url, self._on_message, self._on_reset)
        self._clients: dict[bytes, set[Client]] = {}
        self._channel_of: dict[str, bytes] = {}
        self._subscribing: dict[bytes, asyncio.Future[None]] = {}

    @property
    def connections(self) -> int:
        return sum(len(c) for c in self._clients.values())

    def _channel(self, job_id: str) -> bytes:
        ch = self._channel_of.get(job_id)
        if ch is None:
            ch = self.keys.job_events_channel(job_id).encode()
        return ch

    async def join(self, job_id: str) -> Client:
        """A new client of ``job_id``; returns once live events for the job are flowing to it."""
        channel = self._channel(job_id)
        client = Client(job_id, asyncio.Queue(self.queue_size))
        members = self._clients.get(channel)
        if members is not None:
            members.add(client)
            waiter = self._subscribing.get(channel)
            if waiter is not None:
                await self._await_subscription(client, channel, waiter)
            return client
        self._clients[channel] = {client}
        self._channel_of[job_id] = channel
        SSE_SUBSCRIPTIONS.set(len(self._clients))
        waiter = asyncio.ensure_future(self.subscriber.subscribe(channel))
        self._subscribing[channel] = waiter
        try:
            await self._await_subscription(client, channel, waiter)
        finally:
            if self._subscribing.get(channel) is waiter:
                del self._subscribing[channel]
        return client

    async def _await_subscription(self, client: Client, channel: bytes, waiter: asyncio.Future[None]) -> None:
        try:
            await asyncio.shield(waiter)
        except BaseException:
            self.leave(client)
            raise

    def leave(self, client: Client) -> None:
        client.cancel_timer()
        channel = self._channel(client.job_id)
        members = self._clients.get(channel)
        if members is None or client not in members:
            return
        members.discard(client)
        if not members:
            del self._clients[channel]
            self._channel_of.pop(client.job_id, None)
            self.subscriber.unsubscribe(channel)
            SSE_SUBSCRIPTIONS.set(len(self._clients))

    def _on_message(self, channel: bytes, data: bytes) -> None:
        members = self._clients.get(channel)
        if not members:
            return
        try:
            entry_id, event = parse_published(data)
        except (msgspec.DecodeError, ValueError):
            log.warning("event_unparseable", channel=channel.decode(errors="replace"))
            return
        frame = Frame(render(event.data, entry_id), id_key(entry_id), event.final)
        for client in tuple(members):
            client.push(frame)

    def _on_reset(self) -> None:
        n = 0
        for members in self._clients.values():
            for client in members:
                client.close("redis_reset")
                n += 1
        if n:
            SSE_DROPPED.labels("redis_reset").inc(n)
            log.warning("sse_clients_reset", clients=n)

    async def heartbeats(self, stop: asyncio.Event) -> None:
        """Push a heartbeat to every client every ``heartbeat_seconds`` (run as a task) until ``stop``."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.heartbeat_seconds)
            if stop.is_set():
                return
            frame = heartbeat_frame()
            for members in tuple(self._clients.values()):
                for client in tuple(members):
                    client.push(frame)

    async def run(self) -> None:
        await self.subscriber.run()

    def close_all(self, reason: str = "shutdown") -> None:
        for members in tuple(self._clients.values()):
            for client in tuple(members):
                client.close(reason)

    def stop(self) -> None:
        self.subscriber.close()
