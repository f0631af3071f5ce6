"""Short-lived, single-use SSE stream tickets.

A browser's ``EventSource`` cannot send ``Authorization``; it first calls
``POST /api/v1/jobs/{job_id}/stream-ticket`` with its JWT and then opens
``/api/v1/jobs/{job_id}/stream?ticket=<ticket>``. A ticket is 32 random bytes, bound to one
user and one job, lives ``ttl`` seconds and is consumed with ``GETDEL`` on first use, so a
leaked URL is worthless. Only a hash of the ticket is stored as the key.
"""

from __future__ import annotations

import hashlib
import secrets

from montage_common.keys import Keys
from redis.asyncio import Redis


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


class TicketStore:
    def __init__(self, redis: Redis, keys: Keys, *, ttl_seconds: int = 60) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_seconds = ttl_seconds

    async def issue(self, user_id: str, job_id: str) -> str:
        ticket = secrets.token_urlsafe(32)
        await self.redis.set(self.keys.stream_ticket(_digest(ticket)), f"{user_id}\n{job_id}", ex=self.ttl_seconds)
        return ticket

    async def redeem(self, ticket: str, job_id: str) -> str | None:
        """The user the ticket was issued to, if it is valid for ``job_id``; the ticket is spent either way."""
        if not ticket or len(ticket) > 128:
            return None
        raw = await self.redis.getdel(self.keys.stream_ticket(_digest(ticket)))
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        user_id, _, bound_job = text.partition("\n")
        return user_id if bound_job == job_id and user_id else None
