"""The Lua scripts of the stream runtime and the packing of their arguments.

Every check-then-act of :mod:`montage_streams` (owner check before an ack, a retry or
a renewal; the safe trim floor; consumer removal) runs inside one script, so no other client
can act between the check and the action. All keys one script touches share a hash tag.
Each script is a file of ``lua/`` whose header says what it takes (KEYS, ARGV) and returns.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any, cast

import msgspec
from hiredis import pack_command  # redis[hiredis]: packs in C (redis-py's asyncio client packs in Python)
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import ResponseError

from montage_streams._model import Emit


@cache
def lua(name: str) -> str:
    """The source of ``lua/<name>.lua`` (shipped inside the package)."""
    return (resources.files("montage_streams") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """The scripts registered on one client (EVALSHA, falling back to EVAL once per script)."""

    def __init__(self, redis: Redis) -> None:
        r: Any = redis
        self.ack_emit = r.register_script(lua("ack_emit"))
        self.retry = r.register_script(lua("retry"))
        self.promote = r.register_script(lua("promote"))
        self.renew = r.register_script(lua("renew"))
        self.ack_missing = r.register_script(lua("ack_missing"))
        self.trim = r.register_script(lua("trim"))
        self.gc = r.register_script(lua("gc_consumers"))


_history_codec = msgspec.json.Encoder()


def pool_of(redis: Redis) -> ConnectionPool | None:
    """The connection pool :func:`send_both` may use: a plain client's (not a cluster client, not a
    single-connection client)."""
    pool = getattr(redis, "connection_pool", None)
    if not isinstance(pool, ConnectionPool) or getattr(redis, "connection", None) is not None:
        return None
    return pool


async def send_both(pool: ConnectionPool, first: tuple[Any, ...], second: tuple[Any, ...]) -> tuple[Any, Any]:
    """Two commands in one write on one pooled connection (a pipeline without redis-py's
    per-command overhead); their raw replies, a :class:`ResponseError` in place of an error
    reply. Connection errors raise, as from any command (the connection is then dropped)."""
    conn: Any = await cast(Any, pool).get_connection()
    try:
        await conn.send_packed_command(pack_command(first) + pack_command(second))
        replies: list[Any] = []
        for _ in range(2):
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)
    return replies[0], replies[1]


def entry_fields(emit: Emit, attempt: int = 1, history: Sequence[str] = ()) -> list[str | bytes]:
    """The fields of an entry as ``promote.lua`` re-adds it (id, attempt, payload, history, extras)."""
    out: list[str | bytes] = ["id", emit.message_id or uuid.uuid4().hex]
    if attempt != 1:  # a first attempt carries no attempt field (readers take 1), as from ack_emit.lua
        out += ["a", str(attempt)]
    out += ["m", emit.payload]
    if history:
        out += ["h", _history_codec.encode(list(history))]
    for k, v in emit.extra:
        out += [k, v]
    return out


def batch_args(
    source: str, batch: Sequence[tuple[str, Sequence[Emit]]], fetch: int = 0, *, ids: bool = True
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``ack_emit.lua`` (minus group and consumer) for ``(entry, emits)`` pairs;
    ``ids=False``: the script answers 1 per handed-off entry instead of its new entries' ids.
    A batch whose every entry emits one plain entry, all to one stream (a worker's usual
    hand-off), goes in the script's compact form (mode 2: three arguments per entry)."""
    keys: list[str] = [source]
    index: dict[str, int] = {source: 1}
    first = last = ""
    for entry_id, _ in batch:
        if entry_id:
            first = first or entry_id
            last = entry_id
    # The range of the batch's ownership check: a guess (hand-offs mostly come in the order the
    # entries were read); the script checks what it misses one by one.
    if not ids and batch and _compact(batch):
        argv: list[Any] = [len(batch), fetch, first, last, 2]
        for entry_id, (e,) in batch:
            argv += [entry_id, e.message_id or uuid.uuid4().hex, e.payload]
        return [source, batch[0][1][0].stream], argv
    argv = [len(batch), fetch, first, last, 1 if ids else 0]
    append = argv.append
    for entry_id, emits in batch:
        append(entry_id)
        append(len(emits))
        for e in emits:
            k = index.get(e.stream)
            if k is None:
                keys.append(e.stream)
                k = index[e.stream] = len(keys)
            if not (e.maxlen or e.ttl_seconds or e.extra or e.channel or e.sharded):
                append(k)
                append(e.message_id or uuid.uuid4().hex)
                append(e.payload)
                continue
            argv += [-k, e.maxlen, e.ttl_seconds, len(e.extra), int(e.sharded), e.channel,
                     e.message_id or uuid.uuid4().hex, e.payload]  # fmt: skip
            for name, value in e.extra:
                argv += [name, value]
    return keys, argv


def _compact(batch: Sequence[tuple[str, Sequence[Emit]]]) -> bool:
    """Every entry has a source entry and one plain emit (no maxlen, ttl, extra fields or
    channel), all to one stream."""
    stream = None
    for entry_id, emits in batch:
        if not entry_id or len(emits) != 1:
            return False
        e = emits[0]
        if (
            e.maxlen
            or e.ttl_seconds
            or e.extra
            or e.channel
            or e.sharded
            or (stream is not None and e.stream != stream)
        ):
            return False
        stream = e.stream
    return True


def netstrings(parts: Sequence[str | bytes]) -> bytes:
    """A delayed-set member: netstrings ``<len>:<bytes>`` of [stream, field, value, ...]."""
    out = bytearray()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        out += b"%d:%s" % (len(b), b)
    return bytes(out)
