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
from typing import Any

import msgspec
from redis.asyncio import Redis

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


def entry_fields(emit: Emit, attempt: int = 1, history: Sequence[str] = ()) -> list[str | bytes]:
    """The fields of an entry as ``promote.lua`` re-adds it (id, attempt, payload, history, extras)."""
    out: list[str | bytes] = ["id", emit.message_id or uuid.uuid4().hex, "a", str(attempt), "m", emit.payload]
    if history:
        out += ["h", _history_codec.encode(list(history))]
    for k, v in emit.extra:
        out += [k, v]
    return out


def batch_args(source: str, batch: Sequence[tuple[str, Sequence[Emit]]], fetch: int = 0) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``ack_emit.lua`` (minus group and consumer) for ``(entry, emits)`` pairs."""
    keys: list[str] = [source]
    index: dict[str, int] = {source: 1}
    ids = [entry_id for entry_id, _ in batch if entry_id]
    # The range of the batch's ownership check: a guess (hand-offs mostly come in the order the
    # entries were read); the script checks what it misses one by one.
    argv: list[Any] = [len(batch), fetch, *((ids[0], ids[-1]) if ids else ("", ""))]
    for entry_id, emits in batch:
        argv += [entry_id, len(emits)]
        for e in emits:
            k = index.get(e.stream)
            if k is None:
                keys.append(e.stream)
                k = index[e.stream] = len(keys)
            if not (e.maxlen or e.ttl_seconds or e.extra or e.channel or e.sharded):
                argv += [k, e.message_id or uuid.uuid4().hex, e.payload]
                continue
            argv += [-k, e.maxlen, e.ttl_seconds, len(e.extra), int(e.sharded), e.channel,
                     e.message_id or uuid.uuid4().hex, e.payload]  # fmt: skip
            for name, value in e.extra:
                argv += [name, value]
    return keys, argv


def netstrings(parts: Sequence[str | bytes]) -> bytes:
    """A delayed-set member: netstrings ``<len>:<bytes>`` of [stream, field, value, ...]."""
    out = bytearray()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        out += b"%d:%s" % (len(b), b)
    return bytes(out)
