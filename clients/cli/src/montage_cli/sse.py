"""Server-Sent Events: a line parser and a job event stream that survives dropped connections.

A dropped stream is resumed with ``Last-Event-ID`` (the gateway replays exactly what was
missed) after a backoff of 2, 4, 8 s (then 8 s), bounded in attempts; any received event
resets the backoff.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from montage_contracts import api
from montage_contracts.errors import ErrorCode
from montage_contracts.events import FINAL_EVENTS, Payload, decode_data, encode_data, event_name
from montage_contracts.pipeline import JobStatus
from montage_contracts.routes import route

from montage_cli.client import MontageClient
from montage_cli.errors import ApiError, StackNotRunning, Unavailable

STREAM = route("streamJobEvents")
USER_STREAM = route("streamUserEvents")

BACKOFF_SECONDS: tuple[float, ...] = (2.0, 4.0, 8.0)
MAX_RECONNECTS = 8
READ_TIMEOUT = 75.0  # heartbeats arrive every 30 s; silence for longer means a dead connection


@dataclass
class SseEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None

    def payload(self) -> Payload:
        """The ``data:`` as the event's typed payload (``montage_contracts.events``); ``KeyError`` for
        an event this client does not know, ``msgspec.DecodeError`` for a payload that is not its own."""
        return decode_data(self.event, self.data.encode())

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.data) if self.data else {}
        except ValueError:
            return {"text": self.data}
        return value if isinstance(value, dict) else {"value": value}


@dataclass
class SseParser:
    """Feed decoded lines (without the line break); returns an event on each blank line."""

    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    _retry: int | None = None
    last_id: str | None = None

    def feed(self, line: str) -> SseEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\x00" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        if self._id is not None:
            self.last_id = self._id
        if not self._data and not self._event:
            self._id = None
            return None
        ev = SseEvent(self._event or "message", "\n".join(self._data), self._id, self._retry)
        self._event, self._data, self._id, self._retry = "", [], None, None
        return ev


async def read_events(resp: aiohttp.ClientResponse, parser: SseParser) -> AsyncIterator[SseEvent]:
    """Events of one open SSE response until it ends."""
    buffer = b""
    while True:
        chunk = await asyncio.wait_for(resp.content.readany(), READ_TIMEOUT)
        if not chunk:
            return
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            ev = parser.feed(raw.rstrip(b"\r").decode("utf-8", errors="replace"))
            if ev is not None:
                yield ev


def final_event_from_status(body: dict[str, Any]) -> SseEvent | None:
    """A job found final by polling (its ``api.Job``), as the final event the stream would have sent."""
    job = msgspec.convert(body, api.Job)
    data: api.CompletedData | api.ErrorData
    if job.status == JobStatus.COMPLETED:
        data = api.CompletedData(video_url=job.video_url or "", total_cost=job.total_cost)
    elif job.status == JobStatus.FAILED:
        code = ErrorCode(job.error_code) if job.error_code else ErrorCode.MODULE_FAILURE
        data = api.ErrorData(error=job.error_message or "Job failed", code=code, retryable=job.retryable)
    else:
        return None
    return SseEvent(event_name(data), encode_data(data).decode())


def job_events(
    client: MontageClient,
    job_id: str,
    *,
    last_event_id: str | None = None,
    backoff: Sequence[float] = BACKOFF_SECONDS,
    max_reconnects: int = MAX_RECONNECTS,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_reconnect: Callable[[int, float], None] | None = None,
) -> AsyncIterator[SseEvent]:
    """Every event of the job, resuming after drops, until ``completed`` or ``error``.

    Without ``last_event_id`` the whole log is asked for (``Last-Event-ID: 0-0``): a fresh
    connection would otherwise start at the job's current state (docs/sse.md).
    """

    async def ended() -> SseEvent | None:  # the server closed the stream: is the job already over?
        return final_event_from_status(await client.job(job_id))

    return _resumed(
        client,
        STREAM.url(job_id=job_id),
        SseParser(last_id=last_event_id or "0-0"),
        _Retries(backoff, max_reconnects, sleep, on_reconnect),
        lost=f"lost the progress stream of job {job_id} after {max_reconnects} reconnects",
        ended=ended,
    )


def user_events(
    client: MontageClient,
    *,
    last_event_id: str | None = None,
    backoff: Sequence[float] = BACKOFF_SECONDS,
    max_reconnects: int = MAX_RECONNECTS,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_reconnect: Callable[[int, float], None] | None = None,
) -> AsyncIterator[SseEvent]:
    """Every event of every job of the caller (``GET /api/v1/events``), each with its ``job_id``,
    resuming after drops with ``Last-Event-ID`` (the ``state`` message's id included), until the
    caller stops iterating. Without ``last_event_id`` it starts at the user's current state."""
    return _resumed(
        client,
        USER_STREAM.path,
        SseParser(last_id=last_event_id),
        _Retries(backoff, max_reconnects, sleep, on_reconnect),
        lost=f"lost the event stream after {max_reconnects} reconnects",
    )


@dataclass(frozen=True)
class _Retries:
    """How a dropped stream is opened again: after ``backoff[n - 1]`` (its last value from then on)
    for the n-th failure in a row, at most ``max_reconnects`` in a row."""

    backoff: Sequence[float]
    max_reconnects: int
    sleep: Callable[[float], Awaitable[None]]
    on_reconnect: Callable[[int, float], None] | None


async def _resumed(
    client: MontageClient,
    path: str,
    parser: SseParser,
    retries: _Retries,
    *,
    lost: str,
    ended: Callable[[], Awaitable[SseEvent | None]] | None = None,
) -> AsyncIterator[SseEvent]:
    """The events of the stream at ``path``, opened again with ``Last-Event-ID`` after a drop (a
    server error, 429 or a lost connection: any other refusal is raised) or the server's close, as
    ``retries`` says; any event resets the count, and past it :class:`Unavailable` (``lost``).

    With ``ended`` (a job's stream) it stops after a final event, and when the server closed the
    stream ``ended`` gives the final event it would have sent (None: not final, open it again)."""
    failures = 0
    while True:
        headers = {"Accept": "text/event-stream"}
        if parser.last_id:
            headers["Last-Event-ID"] = parser.last_id
        try:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
            async with client.request("GET", path, headers=headers, timeout=timeout) as resp:
                async for ev in read_events(resp, parser):
                    failures = 0
                    yield ev
                    if ended is not None and ev.event in FINAL_EVENTS:
                        return
            final = await ended() if ended is not None else None
            if final is not None:
                yield final
                return
        except ApiError as err:
            if err.status < 500 and err.status != 429:
                raise
        except (aiohttp.ClientError, TimeoutError, StackNotRunning):
            pass
        failures += 1
        if failures > retries.max_reconnects:
            raise Unavailable(lost)
        delay = retries.backoff[min(failures - 1, len(retries.backoff) - 1)]
        if retries.on_reconnect is not None:
            retries.on_reconnect(failures, delay)
        await retries.sleep(delay)
