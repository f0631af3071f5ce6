"""Hand-offs that are not tied to a stream ack (a new job's first task, a cancel's event, a
timeout) go through a Postgres outbox: the entry is written in the transaction that changes
the job, sent to Redis right after the commit, and re-sent by the sweeper if the process died
in between. Sending locks the row (``FOR UPDATE SKIP LOCKED``) and deletes it in the same
transaction as the ``XADD``s, so two replicas never send one entry twice; only a crash between
the ``XADD`` and the ``COMMIT`` can repeat one (a repeated task has the same dispatch number and
its second result is ignored).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

import asyncpg
import msgspec
import structlog
from montage_streams import Emit, StreamProducer

from montage_orchestrator import store

log = structlog.get_logger()


class EmitRecord(msgspec.Struct, frozen=True, array_like=True):
    stream: str
    payload: bytes
    message_id: str = ""
    channel: str = ""
    maxlen: int = 0
    ttl_seconds: int = 0
    sharded: bool = False


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(list[EmitRecord])


def pack(emits: Sequence[Emit]) -> bytes:
    return _encoder.encode(
        [EmitRecord(e.stream, e.payload, e.message_id, e.channel, e.maxlen, e.ttl_seconds, e.sharded) for e in emits]
    )


def unpack(data: bytes) -> list[Emit]:
    return [
        Emit(
            r.stream,
            r.payload,
            message_id=r.message_id,
            channel=r.channel,
            maxlen=r.maxlen,
            ttl_seconds=r.ttl_seconds,
            sharded=r.sharded,
        )
        for r in _decoder.decode(data)
    ]


class Outbox:
    def __init__(
        self, pool: asyncpg.Pool, producer: StreamProducer, on_sent: Callable[[Sequence[Emit]], None] | None = None
    ) -> None:
        self.pool = pool
        self.producer = producer
        self.on_sent = on_sent  # told what was written (the users' event logs copy the job events)

    @staticmethod
    async def add(conn: asyncpg.Connection, job_id: uuid.UUID | None, emits: Sequence[Emit]) -> int:
        return await store.add_outbox(conn, job_id, pack(emits))

    async def send(self, outbox_id: int) -> bool:
        """Send one entry now; False when another replica has it or it is already sent."""
        async with self.pool.acquire() as conn, conn.transaction():
            data = await store.claim_outbox(conn, outbox_id)
            if data is None:
                return False
            emits = unpack(data)
            await self.producer.emit(emits)
        if self.on_sent is not None:
            self.on_sent(emits)
        return True

    async def send_quietly(self, outbox_id: int) -> None:
        """Send after a commit; a failure is left for the sweeper."""
        try:
            await self.send(outbox_id)
        except Exception as exc:
            log.warning("outbox_send_failed", outbox_id=outbox_id, error=str(exc)[:200])

    async def sweep(self, older_than_seconds: float, limit: int = 100) -> int:
        sent = 0
        for oid in await store.stale_outbox_ids(self.pool, older_than_seconds, limit):
            if await self.send(oid):
                sent += 1
                log.info("outbox_resent", outbox_id=oid)
        return sent
