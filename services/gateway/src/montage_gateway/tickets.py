"""SSE stream tickets: reusable by their user for their job until they expire.

A browser's ``EventSource`` cannot send ``Authorization``; it first calls
``POST /api/v1/jobs/{job_id}/stream-ticket`` with its JWT and then opens
``/api/v1/jobs/{job_id}/stream?ticket=<ticket>``. A ticket is 32 random bytes, bound to one
user and one job, and valid for ``ttl`` seconds (default 20 minutes: longer than a job may run)
for any number of connections, so ``EventSource``'s own reconnects (same URL, plus the
``Last-Event-ID`` header it adds itself) are accepted. It grants nothing else: no other job,
no other route. A ticket of ``POST /api/v1/events/ticket`` is bound to the user's own event stream
(scope :data:`EVENTS_SCOPE`) the same way. Only a hash of the ticket is stored as the key. The reasoning is in
``docs/sse.md``.
"""

from __future__ import annotations

import hashlib
import secrets

from montage_contracts.keys import Keys
from redis.asyncio import Redis

MAX_TICKET_CHARS = 128
# The scope of a ticket for ``GET /api/v1/events`` (all the user's jobs): never a job id.
EVENTS_SCOPE = "*events"


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


class TicketStore:
    def __init__(self, redis: Redis, keys: Keys, *, ttl_seconds: int = 1200) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_seconds = ttl_seconds

    async def issue(self, user_id: str, job_id: str) -> str:
        ticket = secrets.token_urlsafe(32)
        await self.redis.set(self.keys.stream_ticket(_digest(ticket)), f"{user_id}\n{job_id}", ex=self.ttl_seconds)
        return ticket

    async def redeem(self, ticket: str, job_id: str) -> str | None:
        """The user the ticket was issued to, if it is unexpired and valid for ``job_id`` (it stays valid)."""
        if not ticket or len(ticket) > MAX_TICKET_CHARS:
            return None
        raw = await self.redis.get(self.keys.stream_ticket(_digest(ticket)))
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        user_id, _, bound_job = text.partition("\n")
        return user_id if bound_job == job_id and user_id else None
