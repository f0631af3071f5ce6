"""Behind the gateway: a job's work still waiting in Redis, read straight from the streams.

Written against Redis's own commands (``XRANGE``, ``XINFO GROUPS``, ``XPENDING``, ``ZRANGE``) and
the runtime's documented entry fields (``id``: the message id, whose prefix is the job id), not
through ``montage_streams``, so a test of the purge does not ask the purge's own code.
"""

from __future__ import annotations

from typing import Any

from montage_contracts.keys import Keys
from montage_contracts.pipeline import STAGES
from redis.asyncio import Redis


def _id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def queued_work(redis: Redis, keys: Keys, job_id: str) -> list[str]:
    """Every entry of ``job_id`` unread or pending in a stage stream or the clip stream of its
    partition, and every retry of it waiting in the delayed set, as ``"<where>:<entry>"``."""
    r: Any = redis
    partition = keys.partition_of(job_id)
    streams = [(keys.stage_stream(s, partition), keys.stage_group(s)) for s in STAGES]
    streams.append((keys.clip_stream(partition), keys.clip_group()))
    found: list[str] = []
    for stream, group in streams:
        entries = await r.xrange(stream)
        if not entries:
            continue
        groups = {_text(g["name"]): g for g in await r.xinfo_groups(stream)}
        last = _text(groups[group]["last-delivered-id"]) if group in groups else "0-0"
        for entry_id, fields in entries:
            if not _text(fields.get(b"id", b"")).startswith(f"{job_id}:"):
                continue
            pending = group in groups and await r.xpending_range(stream, group, min=entry_id, max=entry_id, count=1)
            if pending or _id(entry_id) > _id(last):
                found.append(f"{stream}:{_text(entry_id)}")
    names = {s for s, _ in streams}
    for member in await r.zrange(keys.delayed_zsets()[partition], 0, -1):
        length, _, rest = member.partition(b":")  # a netstring: the stream it goes back to comes first
        stream = rest[: int(length)].decode()
        if stream in names and job_id.encode() in rest[int(length) :]:
            found.append(f"delayed:{stream}")
    return found
