"""The per-process SSE fan-out hub.

One :class:`~montage_gateway.pubsub.Subscriber` connection serves every SSE client of the
process: a job's channel is subscribed when its first local client joins and unsubscribed when
its last one leaves. Each published event is parsed and rendered into SSE bytes once, then
pushed to the bounded queue of every local client of that job. A client whose queue overflows
(it does not read) is closed; it reconnects with ``Last-Event-ID`` and catches up from the log.
Heartbeats are one timer for all clients. A lost Redis connection closes every client, for the
same reason: reconnecting replays exactly what was missed.

The same hub carries the user streams (``GET /api/v1/events``): :meth:`Hub.join_user` subscribes
the user's channel (``keys.user_events_channel``, fed by the copy into the user's log,
``montage_common.user_events``), whose messages are rendered with their ``job_id``.
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
from montage_common.user_events import parse_user_published, render_user_event
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


def render(data: msgspec.Struct, entry_id: str | None = None, event: str | None = None) -> bytes:
    """One SSE message: ``event:`` (the payload's event name unless given), ``id:`` when logged, ``data:``."""
    event = event or event_name(data)
    head = f"event: {event}\nid: {entry_id}\n" if entry_id else f"event: {event}\n"
    return head.encode() + b"data: " + encode_data(data) + b"\n\n"


def heartbeat_frame() -> Frame:
    return Frame(render(HeartbeatData(timestamp=timestamp(datetime.now(UTC)))), kind="heartbeat")


@dataclass(eq=False)
class Client:
    """One SSE connection's inbox; ``None`` in the queue means: close."""

    job_id: str  # the job, or for a user stream the user
    queue: asyncio.Queue[Frame | None]
    channel: bytes = b""
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
        self._subscribing: dict[bytes, asyncio.Future[None]] = {}
        self._user_channels: set[bytes] = set()  # the channels of user streams (the others: jobs)

    @property
    def connections(self) -> int:
        return sum(len(c) for c in self._clients.values())

    async def join(self, job_id: str) -> Client:
        """A new client of ``job_id``; returns once live events for the job are flowing to it."""
        return await self._join(job_id, self.keys.job_events_channel(job_id).encode())

    async def join_user(self, user_id: str) -> Client:
        """A new client of all of ``user_id``'s events (its log's live channel)."""
        channel = self.keys.user_events_channel(user_id).encode()
        self._user_channels.add(channel)
        return await self._join(user_id, channel)

    async def _join(self, topic: str, channel: bytes) -> Client:
        client = Client(topic, asyncio.Queue(self.queue_size), channel)
        members = self._clients.get(channel)
        if members is not None:
            members.add(client)
            waiter = self._subscribing.get(channel)
            if waiter is not None:
                await self._await_subscription(client, channel, waiter)
            return client
        self._clients[channel] = {client}
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
        channel = client.channel
        members = self._clients.get(channel)
        if members is None or client not in members:
            return
        members.discard(client)
        if not members:
            del self._clients[channel]
            self._user_channels.discard(channel)
            self.subscriber.unsubscribe(channel)
            SSE_SUBSCRIPTIONS.set(len(self._clients))

    def _on_message(self, channel: bytes, data: bytes) -> None:
        members = self._clients.get(channel)
        if not members:
            return
        try:
            if channel in self._user_channels:
                user_event = parse_user_published(data)
                frame = Frame(render_user_event(user_event), id_key(user_event.entry_id))
            else:
                entry_id, event = parse_published(data)
                frame = Frame(render(event.data, entry_id), id_key(entry_id), event.final)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, KeyError):
            log.warning("event_unparseable", channel=channel.decode(errors="replace"))
            return
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
