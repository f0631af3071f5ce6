"""One job's clips fanned out over every video_generator worker (issue #17).

The worker that took a job's ``video_generator`` task is the job's *coordinator*: it fetches the
clips' sources (:mod:`video_generator`), decides each clip's segment and, instead of encoding it
itself, adds a :class:`ClipEntry` to the clip stream of the job's partition
(``keys.clip_stream(p)``). Every video_generator process reads that stream in the ``clips``
group beside its stage stream, with a concurrency of its own (``CLIP_CONCURRENCY``), so a
coordinator waiting for its clips never holds the slots that render them.

A clip entry carries everything its encode needs: the segment (frame span, the transition it opens
with and the previous clip's span), both sources as storage keys (the clip's still or video and
the neighbour's, for the transition), the final encoding settings (size, frame rate, x264 preset,
CRF and parameters; the GOP layout follows from them) and the output key. Its *signature* (a hash
of all that) names it: a clip worker renders it into the output key and, atomically with the
entry's ack, appends a :class:`ClipRecord` (ok or the error, seconds, which worker) to the job's
records stream (``keys.clip_records(job_id)``), which the coordinator reads.

Idempotence: a clip worker skips an entry whose signature already has a record (a redelivered or
reclaimed entry is not rendered twice); the coordinator adds an entry only when its signature is
not in ``keys.clip_dispatched(job_id)``, and takes a clip's outcome from the first record with its
signature. A coordinator that dies is replaced when the stage entry is reclaimed: the new one
makes the same decisions, finds the finished clips' records and reuses them; entries still in
flight are waited for (a dead clip worker's entries are reclaimed by the others). The cost of a
clip is reported by the coordinator, once per clip, from the record's seconds, so the stage's
result still carries one cost per clip (``{job_id}:video_generator:clip_<i>``).

No wake-up is needed (issue #22): the coordinator follows the records stream, and every clip it
waits for also re-reads the whole stream at least every few seconds, so a record the reader
never delivered (a cancel redis-py swallowed, a dropped connection) is still seen. An entry that
is neither recorded nor in flight in the clip stream (Redis lost it) is added again, at most
``MAX_REDISPATCHES`` times, then counted as a failed clip; an entry whose renderer died is in
flight (pending) and is reclaimed by the other clip workers. When no clip of the job finishes for
``CLIP_STALL_SECONDS``, the stage gives up with :class:`ClipsStalled` (``GENERATION_ERROR``),
well before the job's timeout.

Cancellation: a clip worker checks the job's cancel flag before it renders and polls it while
ffmpeg runs (the process is killed); a cancelled entry is recorded as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import msgspec
import structlog
from montage_common import tracing
from montage_common.storage import Storage
from montage_contracts.errors import GenerationError
from montage_contracts.keys import Keys
from montage_contracts.messages import clip_message_id, clip_record_message_id
from montage_streams import REDIS_DOWN, DeadLetter, Delivery, Emit, StreamProducer, in_flight, read_range
from redis.asyncio import Redis

from montage_stages.media import ffmpeg
from montage_stages.media.clip_encoder import Source, StillSource, VideoSource, segment_args
from montage_stages.media.timeline import Segment, Span
from montage_stages.runtime.metrics import CLIP_ENTRIES
from montage_stages.runtime.settings import StageSettings

log = structlog.get_logger()

RECORD_TTL_SECONDS = 2 * 3600  # records and dispatch marks outlive any job (15 min) with room
CANCEL_POLL_SECONDS = 0.5
WAIT_BLOCK_MS = 1000
REDIS_RETRY_SECONDS = 0.5
MAX_REDISPATCHES = 3  # a lost clip entry is added again at most this often


# --- the wire ------------------------------------------------------------------------
class ClipSpan(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    first: int
    frames: int
    start: float
    end: float
    beats: tuple[float, ...] = ()

    @classmethod
    def of(cls, span: Span) -> ClipSpan:
        return cls(
            index=span.index, first=span.first, frames=span.frames, start=span.start, end=span.end, beats=span.beats
        )

    def span(self) -> Span:
        return Span(self.index, self.first, self.frames, self.start, self.end, tuple(self.beats))


class ClipSource(msgspec.Struct, frozen=True, kw_only=True):
    """A clip's source in storage: a still to animate or a provider's video."""

    key: str
    kind: Literal["still", "video"]
    motion: str = "zoom_in"  # a still's motion
    seconds: float = 0.0  # a video's planned length


class ClipEncoding(msgspec.Struct, frozen=True, kw_only=True):
    """The final encoding every clip of the job shares (the composer joins them without re-encoding)."""

    width: int
    height: int
    fps: int
    x264_preset: str
    x264_crf: int
    x264_params: str

    @classmethod
    def of(cls, s: StageSettings) -> ClipEncoding:
        width, height = s.frame_size
        return cls(
            width=width,
            height=height,
            fps=s.video_fps,
            x264_preset=s.x264_preset,
            x264_crf=s.x264_crf,
            x264_params=s.x264_params,
        )

    def settings(self, base: StageSettings, parallel: int) -> StageSettings:
        """``base`` with this encoding (``parallel``: clips encoded at once by this process)."""
        return msgspec.structs.replace(
            base,
            video_resolution="",
            video_width=self.width,
            video_height=self.height,
            video_fps=self.fps,
            x264_preset=self.x264_preset,
            x264_crf=self.x264_crf,
            x264_params=self.x264_params,
            max_parallel_clips=max(1, parallel),
        )


class ClipEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One clip to render; see the module docstring."""

    job_id: str
    index: int
    output_key: str
    span: ClipSpan
    previous: ClipSpan | None = None  # the clip the transition comes from
    transition: str = "cut"
    transition_frames: int = 0
    source: ClipSource
    previous_source: ClipSource | None = None
    encoding: ClipEncoding
    sig: str = ""  # set by :func:`signed`
    # The coordinator's span (W3C), so the clip's render is in the job's trace; not in the signature.
    traceparent: str | msgspec.UnsetType = msgspec.UNSET

    def segment(self) -> Segment:
        previous = self.previous.span() if self.previous is not None else None
        return Segment(self.span.span(), previous, self.transition, self.transition_frames)


class ClipRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one clip entry."""

    job_id: str
    index: int
    sig: str
    ok: bool
    error: str = ""
    cancelled: bool = False
    seconds: float = 0.0  # the encode's wall time (the clip's cost)
    worker: str = ""  # the consumer that rendered it
    deliveries: int = 1


_encoder = msgspec.json.Encoder()
_entry_decoder = msgspec.json.Decoder(ClipEntry)
_record_decoder = msgspec.json.Decoder(ClipRecord)


def signed(entry: ClipEntry) -> ClipEntry:
    """``entry`` with its signature: a hash of everything that decides its frames."""
    body = _encoder.encode(msgspec.structs.replace(entry, sig="", traceparent=msgspec.UNSET))
    sig = hashlib.sha1(body, usedforsecurity=False).hexdigest()[:20]
    return msgspec.structs.replace(entry, sig=sig, traceparent=tracing.traceparent())


def source_of(ref: ClipSource, path: Path) -> Source:
    if ref.kind == "still":
        return StillSource(path, ref.motion)
    return VideoSource(path, ref.seconds)


# --- the coordinator's side -----------------------------------------------------------
class ClipsStalled(GenerationError):
    """No clip of the job was finished for ``CLIP_STALL_SECONDS``: the stage gives up."""

    default_message = "Clip rendering made no progress"


class ClipFanout:
    """A coordinator's link to the clip workers for one stage task: :meth:`render` adds a clip
    entry (unless it was added before) and waits for its record.

    The records reach it two ways: a reader task that follows the records stream (a blocking
    ``XREAD``), and, whatever becomes of that task, a re-read of the whole stream by every waiting
    clip at least every ``rescan_seconds``. A waiting clip whose entry is neither recorded nor in
    flight (unread, pending or waiting for a retry in the clip stream: the entry was lost) is added
    again, at most ``MAX_REDISPATCHES`` times, then recorded as failed; a dead renderer's entry is
    in flight (pending) and is reclaimed by the others. When no record of the job arrives for
    ``stall_seconds`` the stage gives up with :class:`ClipsStalled`.
    """

    def __init__(
        self, redis: Redis, keys: Keys, job_id: str, *, rescan_seconds: float = 5.0, stall_seconds: float = 300.0
    ) -> None:
        self.redis = redis
        self._r: Any = redis
        self.keys = keys
        self.job_id = job_id
        self.rescan_seconds = max(rescan_seconds, 0.05)
        self.stall_seconds = stall_seconds
        self.producer = StreamProducer(redis)
        self.stream = keys.clip_stream(keys.partition_of(job_id))
        self.records_key = keys.clip_records(job_id)
        self.dispatched_key = keys.clip_dispatched(job_id)
        self.records: dict[str, ClipRecord] = {}
        self.waiting: dict[str, asyncio.Future[ClipRecord]] = {}
        self.entries: dict[str, ClipEntry] = {}  # what was asked for, to add again if lost
        self.redispatched: dict[str, int] = {}
        self.dispatched = 0  # entries this coordinator added
        self.reused = 0  # clips whose record was there before this coordinator asked
        self.found_on_rescan = 0  # records the reader had not delivered (a lost wake-up)
        self._last = "0-0"
        self._first_read = asyncio.Event()
        self._closing = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._broken: Exception | None = None  # the reader's failure: every clip waiting gets it
        self._rescan_lock = asyncio.Lock()
        self._rescanned_at = -1e18
        self._progress_at = time.monotonic()  # the last record (or addition) of this job

    async def render(self, entry: ClipEntry) -> ClipRecord:
        entry = signed(entry) if not entry.sig else entry
        self._start()
        with contextlib.suppress(TimeoutError):  # bounded: the rescan below does not need the reader
            await asyncio.wait_for(self._first_read.wait(), self.rescan_seconds)
        if self._broken is not None:
            raise self._broken
        if not self._first_read.is_set():
            await self._rescan(force=True)
        if (found := self.records.get(entry.sig)) is not None:
            self.reused += 1
            return found
        future = self.waiting.get(entry.sig)
        if future is None:
            future = self.waiting[entry.sig] = asyncio.get_running_loop().create_future()
            self.entries[entry.sig] = entry
            self._progress_at = time.monotonic()  # the stall counts from the last clip asked for, at the earliest
            if not await self._r.sismember(self.dispatched_key, entry.sig):
                await self._add(entry)
        return await self._wait(entry.sig, future)

    async def _add(self, entry: ClipEntry) -> None:
        await self.producer.emit(
            [Emit(self.stream, _encoder.encode(entry), message_id=clip_message_id(entry.job_id, entry.sig))]
        )
        self.dispatched += 1
        self._progress_at = time.monotonic()
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.sadd(self.dispatched_key, entry.sig)
            pipe.expire(self.dispatched_key, RECORD_TTL_SECONDS)
            await pipe.execute()

    async def _wait(self, sig: str, future: asyncio.Future[ClipRecord]) -> ClipRecord:
        """The clip's record; never waits on a wake-up alone (see the class docstring)."""
        rounds = int(self.stall_seconds / self.rescan_seconds) + 2
        for _ in range(rounds * (MAX_REDISPATCHES + 1)):  # bounded: each round is rescan_seconds
            await asyncio.wait([future], timeout=self.rescan_seconds)  # never cancels the shared future
            if future.done():
                return future.result()
            await self._rescan()
            if future.done():
                return future.result()
            idle = time.monotonic() - self._progress_at
            if idle >= self.stall_seconds:
                outstanding = sum(1 for f in self.waiting.values() if not f.done())
                raise ClipsStalled(
                    f"No clip finished for {idle:.0f} s ({outstanding} clips outstanding); video_generator gave up",
                    job_id=self.job_id,
                )
        raise ClipsStalled(f"Clip {sig} was never recorded", job_id=self.job_id)

    async def _rescan(self, *, force: bool = False) -> None:
        """Re-read every record of the job and add again the waiting entries that were lost.

        Shared by every waiting clip (at most one per ``rescan_seconds / 2``). The entries in
        flight are looked at *before* the records are read: a record is written atomically with
        its entry's ack, so an entry not in flight then and not recorded now was lost.
        """
        async with self._rescan_lock:
            if not force and time.monotonic() - self._rescanned_at < self.rescan_seconds / 2:
                return
            try:
                waiting = [sig for sig, f in self.waiting.items() if not f.done()]
                ids = {clip_message_id(self.job_id, sig): sig for sig in waiting}
                busy = await in_flight(
                    self.redis,
                    [(self.stream, self.keys.clip_group())],
                    self.keys.delayed_zset(self.stream),
                    ids,
                    separator="\n",  # never in a message id: each id is its own prefix
                )
                found = self._resolve(await read_range(self.redis, self.records_key))
            except REDIS_DOWN as exc:
                log.warning("clip_records_unreadable", job_id=self.job_id, error=repr(exc)[:200])
                return
            finally:
                self._rescanned_at = time.monotonic()
            if found:
                self.found_on_rescan += found
                log.warning("clip_records_found_on_rescan", job_id=self.job_id, count=found)
            if busy is None:  # a backlog too long to scan: nothing can be said lost
                return
            for mid, sig in ids.items():
                if mid not in busy and not self.waiting[sig].done():
                    await self._readd(sig)

    async def _readd(self, sig: str) -> None:
        entry = self.entries.get(sig)
        times = self.redispatched.get(sig, 0) + 1
        self.redispatched[sig] = times
        future = self.waiting[sig]
        if entry is None or times > MAX_REDISPATCHES:
            error = f"the clip's entry was lost {times - 1} times"
            future.set_result(ClipRecord(job_id=self.job_id, index=entry.index if entry else -1, sig=sig, ok=False,
                                         error=error))  # fmt: skip
            return
        log.warning("clip_entry_lost_added_again", job_id=self.job_id, clip=entry.index, times=times)
        CLIP_ENTRIES.labels(outcome="redispatched").inc()
        await self._add(entry)

    def _start(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_loop(), name=f"clip-records-{self.job_id}")

    async def _read_loop(self) -> None:
        try:
            await self._read_records()
        except Exception as exc:  # not Redis being down (retried): the records cannot be read
            log.error("clip_records_reader_failed", job_id=self.job_id, error=repr(exc)[:300])
            self._broken = exc
            self._first_read.set()
            for future in self.waiting.values():
                if not future.done():
                    future.set_exception(exc)

    async def _read_records(self) -> None:
        # Ends by `_closing`, not only by a cancel: redis-py may turn a cancel that lands
        # mid-command into a connection error, which this loop would otherwise retry forever.
        while not self._closing.is_set():
            try:
                entries = await read_range(self.redis, self.records_key, after=self._last)
                if entries:
                    self._last = entries[-1].entry_id
                self._resolve(entries)
                self._first_read.set()
                # wait for the next record (returns at once when one is there)
                await self._r.xread({self.records_key: self._last}, count=1, block=WAIT_BLOCK_MS)
            except REDIS_DOWN as exc:
                task = asyncio.current_task()
                if self._closing.is_set() or (task is not None and task.cancelling()):
                    return  # redis-py may turn a cancel mid-command into a connection error
                log.warning("clip_records_unreadable", job_id=self.job_id, error=repr(exc)[:200])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), REDIS_RETRY_SECONDS)

    def _resolve(self, entries: list[Any]) -> int:
        """Take the records among ``entries``; returns how many resolved a waiting clip."""
        resolved = 0
        for e in entries:
            try:
                record = _record_decoder.decode(e.payload)
            except msgspec.DecodeError:
                log.error("clip_record_undecodable", job_id=self.job_id, entry=e.entry_id)
                continue
            if record.sig not in self.records:
                self.records[record.sig] = record
                self._progress_at = time.monotonic()
            future = self.waiting.get(record.sig)
            if future is not None and not future.done():
                future.set_result(self.records[record.sig])
                resolved += 1
        return resolved

    async def close(self) -> None:
        self._closing.set()
        if self._reader is not None:
            log.info("clips_fanned_out", job_id=self.job_id, added=self.dispatched, reused=self.reused,
                     found_on_rescan=self.found_on_rescan)  # fmt: skip
            self._reader.cancel()
            # bounded: the stage's result must not wait on a read the cancel did not reach
            _, stuck = await asyncio.wait([self._reader], timeout=WAIT_BLOCK_MS / 1000 + 5.0)
            if stuck:
                log.warning("clip_records_reader_stuck", job_id=self.job_id)
            elif not self._reader.cancelled():
                with contextlib.suppress(Exception):
                    self._reader.result()
        for future in self.waiting.values():
            future.cancel()


# --- the clip worker's side -----------------------------------------------------------
class ClipWorker:
    """Renders clip entries (the ``clips`` group's handler in every video_generator process)."""

    def __init__(
        self, settings: StageSettings, redis: Redis, storage: Storage, keys: Keys, *, consumer: str, parallel: int
    ) -> None:
        self.settings = settings
        self.redis = redis
        self._r: Any = redis
        self.storage = storage
        self.keys = keys
        self.consumer = consumer
        self.parallel = parallel

    async def handle(self, d: Delivery) -> list[Emit]:
        entry = _entry_decoder.decode(d.payload)
        records = self.keys.clip_records(entry.job_id)
        attributes = {"montage.job_id": entry.job_id, "montage.stage": "video_generator", "montage.clip": entry.index}
        attributes["montage.attempt"] = d.attempt
        with (
            tracing.span(
                "clip render", parent=entry.traceparent, kind=tracing.SpanKind.CONSUMER, attributes=attributes
            ) as span,
            structlog.contextvars.bound_contextvars(job_id=entry.job_id, clip=entry.index, sig=entry.sig),
        ):
            if any(_record_decoder.decode(e.payload).sig == entry.sig for e in await read_range(self.redis, records)):
                CLIP_ENTRIES.labels(outcome="duplicate").inc()
                log.info("clip_entry_already_done", deliveries=d.delivery_count)
                return []
            record = await self._render(entry, d)
            if not record.ok:
                tracing.fail(span, "CLIP_FAILED", record.error)
        CLIP_ENTRIES.labels(outcome="cancelled" if record.cancelled else "ok" if record.ok else "failed").inc()
        return [self._emit(record, d)]

    def dead_letter(self, d: Delivery, dead: DeadLetter) -> list[Emit]:
        """An entry that kept killing its worker: recorded as failed, so the coordinator goes on."""
        try:
            entry = _entry_decoder.decode(d.payload)
        except msgspec.DecodeError:
            log.error("clip_entry_undecodable", entry=d.entry_id)
            return []
        CLIP_ENTRIES.labels(outcome="failed").inc()
        record = ClipRecord(
            job_id=entry.job_id,
            index=entry.index,
            sig=entry.sig,
            ok=False,
            error=f"{dead.code}: {dead.message}"[:500],
            worker=self.consumer,
            deliveries=d.delivery_count,
        )
        return [self._emit(record, d)]

    def _emit(self, record: ClipRecord, d: Delivery) -> Emit:
        return Emit(
            self.keys.clip_records(record.job_id),
            _encoder.encode(record),
            message_id=clip_record_message_id(d.message_id),
            ttl_seconds=RECORD_TTL_SECONDS,
        )

    async def _cancelled(self, job_id: str) -> bool:
        return bool(await self._r.exists(self.keys.job_cancel(job_id)))

    async def _render(self, entry: ClipEntry, d: Delivery) -> ClipRecord:
        def record(ok: bool, seconds: float = 0.0, error: str = "", cancelled: bool = False) -> ClipRecord:
            return ClipRecord(
                job_id=entry.job_id,
                index=entry.index,
                sig=entry.sig,
                ok=ok,
                error=error[:500],
                cancelled=cancelled,
                seconds=round(seconds, 4),
                worker=self.consumer,
                deliveries=d.delivery_count,
            )

        if await self._cancelled(entry.job_id):
            return record(False, error="Job cancelled by user", cancelled=True)
        workdir = Path(tempfile.mkdtemp(prefix="montage-clip-"))
        try:
            own = await self._fetch(entry.source, workdir / "own")
            previous = await self._fetch(entry.previous_source, workdir / "previous") if entry.previous_source else None
            s = entry.encoding.settings(self.settings, self.parallel)
            dest = workdir / f"clip_{entry.index}.mp4"
            started = time.perf_counter()
            encode = asyncio.create_task(
                ffmpeg.run(segment_args(entry.segment(), own, previous, s, dest), exe=s.ffmpeg_path)
            )
            while not encode.done():  # bounded by the encode
                await asyncio.wait([encode], timeout=CANCEL_POLL_SECONDS)
                if not encode.done() and await self._cancelled(entry.job_id):
                    encode.cancel()  # kills ffmpeg
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await encode
                    log.info("clip_cancelled")
                    return record(False, error="Job cancelled by user", cancelled=True)
            encode.result()
            seconds = time.perf_counter() - started
            await self.storage.put_file(entry.output_key, dest, "video/mp4")
            log.info("clip_rendered", seconds=round(seconds, 3), deliveries=d.delivery_count)
            return record(True, seconds)
        except Exception as exc:
            message = getattr(exc, "message", "") or f"{type(exc).__name__}: {exc}"
            log.warning("clip_encode_failed", error=message[:300])
            return record(False, error=message)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def _fetch(self, ref: ClipSource, stem: Path) -> Source:
        path = stem.with_suffix(Path(ref.key).suffix or ".bin")
        await self.storage.get_file(ref.key, path)
        return source_of(ref, path)
