"""Webhook deliveries in the console: a job's deliveries (attempts, last status) and resending one.

A resend puts the delivery back in line at once with the same ``webhook-id`` (receivers
deduplicate on it), whatever its state: a ``failed`` one gets a new retry window, a ``delivered``
one is sent again (a receiver that lost it). Logged in ``admin_actions`` in the same transaction,
also when there is no such delivery.
"""

from __future__ import annotations

import re

import structlog
from aiohttp import web
from montage_common.web import REQUEST_ID
from montage_contracts import api
from montage_contracts.errors import NotFound

from montage_orchestrator import store, webhooks
from montage_orchestrator.admin.access import admin
from montage_orchestrator.admin.actions import record_action
from montage_orchestrator.http import job_uuid, respond

log = structlog.get_logger()

_WEBHOOK_ID = re.compile(api.WEBHOOK_ID_PATTERN)


async def job_webhooks(request: web.Request) -> web.Response:
    deps, _ = admin(request)
    job_id = job_uuid(request)
    if await store.get_job(deps.pool, job_id) is None:
        raise NotFound("Job not found", job_id=str(job_id))
    return respond(api.AdminWebhookDeliveries(deliveries=await webhooks.deliveries(deps.pool, job_id)))


async def resend_webhook(request: web.Request) -> web.Response:
    deps, actor = admin(request)
    webhook_id = request.match_info["webhook_id"]
    if _WEBHOOK_ID.fullmatch(webhook_id) is None:
        raise NotFound("No such webhook delivery")
    target = f"webhook/{webhook_id}"
    async with deps.pool.acquire() as conn, conn.transaction():
        before = await conn.fetchrow("SELECT state, attempts FROM webhook_deliveries WHERE id = $1", webhook_id)
        row = await webhooks.resend(conn, webhook_id)
        if row is None:
            await record_action(conn, actor, "webhook.resend", target, None, "not_found", {}, request[REQUEST_ID])
        else:
            assert before is not None
            detail = {"was": before["state"], "attempts": before["attempts"], "url": row["url"]}
            await record_action(
                conn, actor, "webhook.resend", target, row["job_id"], "done", detail, request[REQUEST_ID]
            )
    if row is None:
        raise NotFound("No such webhook delivery")
    deps.webhooks_due.set()
    log.info("admin_webhook_resent", webhook_id=webhook_id, job_id=str(row["job_id"]), actor=actor)
    return respond(webhooks.delivery_row(row))
