"""Webhooks: a job's final event POSTed to the URL given at upload, by the Standard Webhooks rules.

**The outbox.** When a job with a ``webhook_url`` becomes final, a row of ``webhook_deliveries``
is written by a trigger on ``jobs`` (migration ``0700_webhooks.sql``) in the very transaction that
changes its status, whichever path changes it: the pipeline (completed, or failed by a stage),
the owner's or an operator's cancel, a timeout, the reconciler. Nothing is lost between the
status change and the delivery, and nothing is sent for a change that rolled back.

**The delivery loop** (:class:`Sender`, one per orchestrator process, safe on every replica):
each round *claims* the rows due (``FOR UPDATE SKIP LOCKED``, so two replicas never take the same
row) by moving their ``next_attempt_at`` one lease ahead and counting the attempt, commits, then
sends each. A process that dies mid-delivery leaves its rows to be taken again when the lease
ends: at least once, always with the row's ``id`` as ``webhook-id``. An answer 2xx marks the row
``delivered``; anything else (another status, a redirect, a timeout, a refused address) schedules
the next attempt after ``WEBHOOK_RETRY_BASE_SECONDS`` doubling per attempt up to
``WEBHOOK_RETRY_MAX_INTERVAL_SECONDS`` (5 s, 10 s, 20 s … then hourly), until an attempt fails
``WEBHOOK_RETRY_WINDOW_SECONDS`` (24 h) after the event: the row is then ``failed``, and an
operator can resend it from the console (:func:`resend`).

**Each attempt**: the URL is checked again (:mod:`montage_orchestrator.ssrf`: https outside
development, public addresses only) and the connection goes to the addresses that were checked
(no second DNS answer can slip in), no redirect is followed, no proxy used. The body is
:class:`montage_contracts.api.WebhookEvent`; ``webhook-timestamp`` is the attempt's time and
``webhook-signature`` is ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`` with
``WEBHOOK_SECRET`` (the ``standardwebhooks`` package signs). ``data.video_url`` is signed when the
attempt is made, so a late retry still carries a working link.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import msgspec
import structlog
from aiohttp import web
from montage_common.web import internal_user
from montage_contracts import api
from montage_contracts.api import WebhookState, timestamp
from montage_contracts.errors import ValidationError, job_retryable
from montage_contracts.pipeline import JobStatus
from standardwebhooks.webhooks import Webhook

from montage_orchestrator import metrics, ssrf
from montage_orchestrator.deps import DEPS, Deps
from montage_orchestrator.http import respond

log = structlog.get_logger()

USER_AGENT = "Montage-Webhooks/1"
BATCH = 50
LEASE_EXTRA_SECONDS = 5.0  # a claimed row is taken again this long after its attempt's timeout
BACKLOG_EVERY_SECONDS = 5.0
_encoder = msgspec.json.Encoder(decimal_format="number")


def policy_of(deps: Deps) -> ssrf.UrlPolicy:
    return ssrf.UrlPolicy.for_environment(deps.settings.environment)


async def check_upload_url(deps: Deps, raw: str | None, resolve: ssrf.Resolve = ssrf.system_resolve) -> str | None:
    """The upload's ``webhook_url`` once checked (None when absent or empty); 400 when refused."""
    url = (raw or "").strip()
    if not url:
        return None
    if not deps.settings.webhook_signing_secret:
        raise ValidationError("webhook_url is not available: this deployment has no WEBHOOK_SECRET")
    try:
        await ssrf.check(url, policy_of(deps), resolve)
    except ssrf.UnsafeUrl as err:
        metrics.WEBHOOK_URLS_REFUSED.labels("upload").inc()
        raise ValidationError(str(err)) from None
    return url


def backoff_seconds(attempts: int, base: float, cap: float) -> float:
    """The wait after the ``attempts``-th failed attempt: ``base`` doubling, at most ``cap``, +0-10 %."""
    delay: float = min(cap, base * 2.0 ** min(max(attempts - 1, 0), 40))
    return delay * (1.0 + random.random() * 0.1)


def event_body(row: asyncpg.Record | dict[str, Any], video_url: str | None) -> bytes:
    """The delivery's body (:class:`api.WebhookEvent`) from its row (``data`` as the trigger wrote it)."""
    raw = row["data"]
    data: dict[str, Any] = json.loads(raw) if isinstance(raw, str | bytes) else dict(raw)
    completed = data.get("completed_at")
    code = data.get("error_code")
    event = api.WebhookEvent(
        type=row["event_type"],
        timestamp=timestamp(row["created_at"]),
        data=api.WebhookJobData(
            job_id=str(data["job_id"]),
            status=JobStatus(data["status"]),
            video_url=video_url,
            total_cost=float(data.get("total_cost") or 0),
            error=data.get("error"),
            error_code=code,
            retryable=data["status"] == JobStatus.FAILED and job_retryable(code),
            completed_at=timestamp(datetime.fromisoformat(completed)) if completed else None,
            retry_of=data.get("retry_of"),
        ),
    )
    return _encoder.encode(event)


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    status: int | None = None
    error: str | None = None
    refused: bool = False


_CLAIM = """
WITH due AS (
    SELECT id FROM webhook_deliveries
    WHERE state = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d
SET attempts = d.attempts + 1, last_attempt_at = now(), next_attempt_at = now() + make_interval(secs => $2)
FROM due, jobs j
WHERE d.id = due.id AND j.job_id = d.job_id
RETURNING d.*, j.video_key, j.files_cleaned_at
"""

_DELIVERED = """
UPDATE webhook_deliveries
SET state = 'delivered', delivered_at = now(), last_status = $3, last_error = NULL
WHERE id = $1 AND attempts = $2 AND state = 'pending'
RETURNING state
"""

_FAILED = """
UPDATE webhook_deliveries
SET last_status = $3, last_error = $4,
    state = CASE WHEN now() - retry_from >= make_interval(secs => $5) THEN 'failed' ELSE 'pending' END,
    next_attempt_at = now() + make_interval(secs => $6)
WHERE id = $1 AND attempts = $2 AND state = 'pending'
RETURNING state
"""


class Sender:
    """The delivery loop of one process (see the module docstring)."""

    def __init__(self, deps: Deps, resolve: ssrf.Resolve = ssrf.system_resolve) -> None:
        self.deps = deps
        self.resolve = resolve
        secret = deps.settings.webhook_signing_secret
        self.signer = Webhook(secret) if secret else None
        self.policy = policy_of(deps)
        self._backlog_at = 0.0

    async def tick(self) -> int:
        """Claim the deliveries due and attempt each; how many were attempted."""
        s = self.deps.settings
        lease = s.webhook_timeout_seconds + LEASE_EXTRA_SECONDS
        rows = await self.deps.pool.fetch(_CLAIM, min(BATCH, s.webhook_concurrency * 4), lease)
        if rows:
            sem = asyncio.Semaphore(s.webhook_concurrency)

            async def one(row: asyncpg.Record) -> None:
                async with sem:
                    await self.attempt(row)

            await asyncio.gather(*(one(r) for r in rows))
        return len(rows)

    async def attempt(self, row: asyncpg.Record) -> Outcome:
        """Send one claimed delivery and record what came of it."""
        s = self.deps.settings
        delivery_id, attempts = row["id"], row["attempts"]
        outcome = await self._send(row)
        if outcome.ok:
            await self.deps.pool.fetchval(_DELIVERED, delivery_id, attempts, outcome.status)
            metrics.WEBHOOK_ATTEMPTS.labels("delivered").inc()
            log.info("webhook_delivered", webhook_id=delivery_id, job_id=str(row["job_id"]), attempts=attempts)
            return outcome
        delay = backoff_seconds(attempts, s.webhook_retry_base_seconds, s.webhook_retry_max_interval_seconds)
        state = await self.deps.pool.fetchval(
            _FAILED, delivery_id, attempts, outcome.status, outcome.error, s.webhook_retry_window_seconds, delay
        )
        metrics.WEBHOOK_ATTEMPTS.labels("refused" if outcome.refused else "failed").inc()
        if state == WebhookState.FAILED:
            metrics.WEBHOOK_GAVE_UP.inc()
        log.warning(
            "webhook_attempt_failed",
            webhook_id=delivery_id,
            job_id=str(row["job_id"]),
            attempts=attempts,
            status=outcome.status,
            error=outcome.error,
            gave_up=state == WebhookState.FAILED,
            retry_in=round(delay, 1) if state == WebhookState.PENDING else None,
        )
        return outcome

    async def _video_url(self, row: asyncpg.Record) -> str | None:
        if row["event_type"] != "job.completed" or not row["video_key"] or row["files_cleaned_at"] is not None:
            return None
        try:
            url: str = await self.deps.storage.signed_url(row["video_key"], self.deps.settings.download_url_seconds)
        except Exception as exc:  # the event still goes out; the receiver can ask /download
            log.warning("webhook_video_url_failed", job_id=str(row["job_id"]), error=str(exc)[:200])
            return None
        return url

    async def _send(self, row: asyncpg.Record) -> Outcome:
        if self.signer is None:
            return Outcome(ok=False, error="WEBHOOK_SECRET is not set")
        try:
            dest = await ssrf.check(row["url"], self.policy, self.resolve)
        except ssrf.UnsafeUrl as err:
            metrics.WEBHOOK_URLS_REFUSED.labels("delivery").inc()
            return Outcome(ok=False, error=f"refused: {err}", refused=True)
        body = event_body(row, await self._video_url(row))
        sent_at = datetime.fromtimestamp(int(time.time()), UTC)
        headers = {
            "webhook-id": row["id"],
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self.signer.sign(row["id"], sent_at, body),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        timeout = aiohttp.ClientTimeout(total=self.deps.settings.webhook_timeout_seconds)
        connector = aiohttp.TCPConnector(resolver=ssrf.PinnedResolver(dest), use_dns_cache=False, force_close=True)
        started = time.monotonic()
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as session,
                session.post(dest.url, data=body, headers=headers, allow_redirects=False) as resp,
            ):
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return Outcome(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
        finally:
            metrics.WEBHOOK_SECONDS.observe(time.monotonic() - started)
        if 200 <= status < 300:
            return Outcome(ok=True, status=status)
        why = "a redirect (not followed)" if 300 <= status < 400 else "not 2xx"
        return Outcome(ok=False, status=status, error=f"HTTP {status}: {why}")

    async def export_backlog(self) -> None:
        row = await self.deps.pool.fetchrow(
            "SELECT count(*) AS n, EXTRACT(EPOCH FROM now() - min(created_at)) AS oldest"
            " FROM webhook_deliveries WHERE state = 'pending'"
        )
        assert row is not None
        metrics.WEBHOOK_BACKLOG.set(row["n"])
        metrics.WEBHOOK_OLDEST_PENDING.set(float(row["oldest"] or 0.0))

    async def run(self, stop: asyncio.Event) -> None:
        s = self.deps.settings
        while not stop.is_set():
            busy = 0
            try:
                busy = await self.tick()
                if time.monotonic() - self._backlog_at >= BACKLOG_EVERY_SECONDS:
                    self._backlog_at = time.monotonic()
                    await self.export_backlog()
            except Exception as exc:
                log.warning("webhook_round_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            if busy:
                continue  # more may be due at once
            self.deps.webhooks_due.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(stop, self.deps.webhooks_due), s.webhook_poll_seconds)


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


# --- a user's default URL ----------------------------------------------------------------
async def default_url(pool: asyncpg.Pool, user: str) -> str | None:
    url: str | None = await pool.fetchval("SELECT url FROM user_webhooks WHERE user_id = $1", user)
    return url


def _default_body(row: asyncpg.Record | None) -> api.WebhookDefault:
    if row is None:
        return api.WebhookDefault(webhook_url=None, updated_at=None)
    return api.WebhookDefault(webhook_url=row["url"], updated_at=timestamp(row["updated_at"]))


async def get_default(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    user = internal_user(request, deps.settings.internal_secret)
    row = await deps.pool.fetchrow("SELECT url, updated_at FROM user_webhooks WHERE user_id = $1", user)
    return respond(_default_body(row))


async def set_default(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    user = internal_user(request, deps.settings.internal_secret)
    try:
        body = msgspec.json.decode(await request.read(), type=api.WebhookDefaultRequest)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise ValidationError('Body must be {"webhook_url": "https://…"}') from None
    url = await check_upload_url(deps, body.webhook_url)
    if url is None:
        raise ValidationError("webhook_url must not be empty (DELETE /api/v1/webhook removes the default)")
    row = await deps.pool.fetchrow(
        "INSERT INTO user_webhooks (user_id, url) VALUES ($1, $2)"
        " ON CONFLICT (user_id) DO UPDATE SET url = EXCLUDED.url, updated_at = now() RETURNING url, updated_at",
        user,
        url,
    )
    return respond(_default_body(row))


async def delete_default(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    user = internal_user(request, deps.settings.internal_secret)
    await deps.pool.execute("DELETE FROM user_webhooks WHERE user_id = $1", user)
    return web.Response(status=204)


# --- the console ------------------------------------------------------------------------
async def deliveries(pool: asyncpg.Pool, job_id: uuid.UUID) -> list[api.AdminWebhookDelivery]:
    rows = await pool.fetch("SELECT * FROM webhook_deliveries WHERE job_id = $1 ORDER BY created_at, id", job_id)
    return [delivery_row(r) for r in rows]


def delivery_row(r: asyncpg.Record) -> api.AdminWebhookDelivery:
    return api.AdminWebhookDelivery(
        webhook_id=r["id"],
        job_id=str(r["job_id"]),
        url=r["url"],
        event_type=r["event_type"],
        state=WebhookState(r["state"]),
        attempts=r["attempts"],
        last_status=r["last_status"],
        last_error=r["last_error"],
        last_attempt_at=None if r["last_attempt_at"] is None else timestamp(r["last_attempt_at"]),
        next_attempt_at=timestamp(r["next_attempt_at"]) if r["state"] == WebhookState.PENDING else None,
        delivered_at=None if r["delivered_at"] is None else timestamp(r["delivered_at"]),
        created_at=timestamp(r["created_at"]),
    )


async def resend(conn: asyncpg.Connection, webhook_id: str) -> asyncpg.Record | None:
    """Put a delivery back in line now, whatever its state (same ``webhook-id``); None: no such row.
    Its retry window starts again from now (the body's ``timestamp`` stays the event's time)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = now(), delivered_at = NULL,"
        " retry_from = now() WHERE id = $1 RETURNING *",
        webhook_id,
    )
    return row
