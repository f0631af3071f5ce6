"""The console's handlers by operation id (``montage_contracts.routes`` says where each is served)."""

from __future__ import annotations

from aiohttp import web
from montage_common.web import Handler

from montage_orchestrator.admin.actions import list_actions
from montage_orchestrator.admin.dead_letters import (
    delete_dead_letter_route,
    list_dead_letters,
    retry_all_dead_letters,
    retry_dead_letter,
)
from montage_orchestrator.admin.jobs import cancel_job, delete_job, job_detail, search_jobs
from montage_orchestrator.admin.queues import ResultWindow, queues
from montage_orchestrator.admin.webhooks import job_webhooks, resend_webhook


def handlers() -> dict[str, Handler]:
    """The admin routes' handlers (``montage_orchestrator.routes.handlers()`` includes them); one
    result window per call."""
    window = ResultWindow()

    async def queues_route(request: web.Request) -> web.Response:
        return await queues(request, window)

    return {
        "getAdminQueues": queues_route,
        "listAdminDeadLetters": list_dead_letters,
        "retryAllAdminDeadLetters": retry_all_dead_letters,
        "retryAdminDeadLetter": retry_dead_letter,
        "deleteAdminDeadLetter": delete_dead_letter_route,
        "searchAdminJobs": search_jobs,
        "getAdminJob": job_detail,
        "cancelAdminJob": cancel_job,
        "deleteAdminJob": delete_job,
        "listAdminActions": list_actions,
        "listAdminJobWebhooks": job_webhooks,
        "resendAdminWebhook": resend_webhook,
    }
