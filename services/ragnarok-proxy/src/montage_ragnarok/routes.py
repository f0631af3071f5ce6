"""The Nexus endpoints (their routes: ``montage_contracts.routes``, tag ``nexus``). The gateway
forwards them unchanged after authenticating the user and adds ``X-Montage-Internal`` (shared
secret) and ``X-Montage-User-Id``.
"""

from __future__ import annotations

import posixpath
import secrets
import time
import uuid
from typing import Any

import msgspec
import structlog
from aiohttp import web
from montage_common import db
from montage_common.web import Handler, internal_user, json_response
from montage_contracts import api
from montage_contracts.api import timestamp
from montage_contracts.errors import Forbidden, MontageError, NotFound, ServiceUnavailable, ValidationError
from montage_contracts.routes import Service, route, served_by

from montage_ragnarok import admin
from montage_ragnarok.deps import DEPS, Deps
from montage_ragnarok.settings import ProxySettings
from montage_ragnarok.store import Job

log = structlog.get_logger()

# Where the Nexus routes live (the table's `nexus` routes share it): requests under it get a trace id.
PREFIX = posixpath.commonpath([r.template for r in served_by(Service.RAGNAROK) if r.tag == "nexus"])
MAX_NAME = 200
TRACE_ID: web.RequestKey[str] = web.RequestKey("trace_id", str)
HEADER_TRACE = "X-Trace-ID"


def new_trace_id() -> str:
    return f"nxs_{int(time.time())}_{secrets.token_hex(6)}"


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


def tracking_url(job_id: str) -> str:
    return route("nexusGetJob").url(job_id=job_id)


@web.middleware
async def trace_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outer: give every Nexus request a ``trace_id``, bound to all its log lines and sent back."""
    if not request.path.startswith(PREFIX):
        return await handler(request)
    trace_id = new_trace_id()
    request[TRACE_ID] = trace_id
    with structlog.contextvars.bound_contextvars(trace_id=trace_id):
        response = await handler(request)
        response.headers.setdefault(HEADER_TRACE, trace_id)
        return response


@web.middleware
async def trace_errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Inner (before errors become responses): put the request's ``trace_id`` on error bodies."""
    try:
        return await handler(request)
    except MontageError as err:
        if (trace_id := request.get(TRACE_ID)) is not None:
            err.extra.setdefault("trace_id", trace_id)
        raise


def job_view(job: Job) -> api.NexusJob:
    """The single job shape of ``GET /jobs/{job_id}``."""
    return api.NexusJob(
        job_id=job.job_id,
        workflow_id=job.workflow_id,
        status=job.status,
        tracking_url=tracking_url(job.job_id),
        business_name=job.business_name,
        video_url=job.video_url,
        cost_usd=float(job.cost_usd) if job.cost_usd is not None else None,
        quality_score=job.quality_score,
        error=job.error,
        enrichment=job.enrichment,
        trace_id=job.trace_id,
        created_at=timestamp(job.created_at),
        updated_at=timestamp(job.updated_at),
        completed_at=timestamp(job.completed_at) if job.completed_at else None,
    )


def _storable(text: str) -> bool:
    """Postgres text and jsonb hold neither NUL characters nor lone surrogates."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_storable(body: object) -> None:
    """Refuse (400) what the job record could not store, before RAGNAROK is called."""
    stack = [body]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not _storable(item):
                raise ValidationError("Text must not contain NUL characters or unpaired surrogates")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _name(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{field} is required")
    if len(value) > MAX_NAME:
        raise ValidationError(f"{field} must be at most {MAX_NAME} characters")
    _check_storable(value)
    return value.strip()


async def _json_object(request: web.Request, *, required: bool) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ValidationError("A JSON object body is required")
        return {}
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise ValidationError("Body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ValidationError("Body must be a JSON object")
    _check_storable(body)
    return body


class NexusHandlers:
    """Routes of the proxy; dependencies come from ``app[DEPS]``."""

    def __init__(self, settings: ProxySettings) -> None:
        self.secret = settings.internal_secret

    def handlers(self) -> dict[str, Handler]:
        """The handler of each of the proxy's routes in ``montage_contracts.routes``, by operation id."""
        return {
            "nexusEnrichedSubmit": self.generate_enriched,
            "nexusDirectSubmit": self.direct_submit,
            "nexusGetJob": self.get_job,
            # The operator console's list (admins only; see admin.py).
            "listAdminNexusJobs": admin.list_handler(self.secret, lambda app: app[DEPS].store.pool),
        }

    async def generate_enriched(self, request: web.Request) -> web.Response:
        user_id = internal_user(request, self.secret)
        deps = request.app[DEPS]
        trace_id = request[TRACE_ID]
        with structlog.contextvars.bound_contextvars(user_id=user_id):
            body = await _json_object(request, required=True)
            company = _name(body.get("company_name"), "company_name")
            industry = body.get("industry")
            if industry is not None and not isinstance(industry, str):
                raise ValidationError("industry must be a string")
            enrichment = await deps.trinity.enrich(body, trace_id=trace_id)
            payload = {**body, "business_name": company, "industry": industry}
            payload.pop("company_name", None)
            if enrichment.get("available"):
                payload["enrichment"] = {k: v for k, v in enrichment.items() if k != "available"}
            return await self._submit(
                deps,
                user_id=user_id,
                trace_id=trace_id,
                kind="enriched",
                business=company,
                record=body,
                payload=payload,
                enrichment=enrichment,
            )

    async def direct_submit(self, request: web.Request) -> web.Response:
        user_id = internal_user(request, self.secret)
        deps = request.app[DEPS]
        trace_id = request[TRACE_ID]
        with structlog.contextvars.bound_contextvars(user_id=user_id):
            business = _name(request.query.get("business_name"), "business_name")
            body = await _json_object(request, required=False)
            payload = {**body, "business_name": business}
            record = {**body, "business_name": business}
            return await self._submit(
                deps,
                user_id=user_id,
                trace_id=trace_id,
                kind="direct",
                business=business,
                record=record,
                payload=payload,
                enrichment=None,
            )

    async def _submit(
        self,
        deps: Deps,
        *,
        user_id: str,
        trace_id: str,
        kind: str,
        business: str,
        record: dict[str, Any],
        payload: dict[str, Any],
        enrichment: dict[str, Any] | None,
    ) -> web.Response:
        job_id = new_job_id()
        payload["client_reference"] = job_id
        with structlog.contextvars.bound_contextvars(job_id=job_id):
            submitted = await deps.ragnarok.submit(payload, trace_id=trace_id)
            with structlog.contextvars.bound_contextvars(workflow_id=submitted.workflow_id):
                job = await self._record(
                    deps,
                    job_id,
                    submitted.workflow_id,
                    submitted.status,
                    user_id=user_id,
                    trace_id=trace_id,
                    kind=kind,
                    business=business,
                    record=record,
                    enrichment=enrichment,
                )
                log.info("job_submitted", kind=kind, business_name=business)
        ids = {"job_id": job.job_id, "workflow_id": job.workflow_id, "tracking_url": tracking_url(job.job_id)}
        response = api.NexusSubmitted(**ids, status=job.status, trace_id=trace_id)
        if kind == "enriched":
            response = api.NexusEnrichedSubmitted(
                **ids, status=job.status, trace_id=trace_id, enrichment=enrichment or {}
            )
        return json_response(response, status=202)

    async def _record(
        self,
        deps: Deps,
        job_id: str,
        workflow_id: str,
        status: str,
        *,
        user_id: str,
        trace_id: str,
        kind: str,
        business: str,
        record: dict[str, Any],
        enrichment: dict[str, Any] | None,
    ) -> Job:

        async def insert() -> Job:
            return await deps.store.insert(
                job_id=job_id,
                user_id=user_id,
                workflow_id=workflow_id,
                kind=kind,
                business_name=business,
                status=status,
                request=record,
                enrichment=enrichment,
                trace_id=trace_id,
                first_poll_in=deps.settings.poll_interval_seconds,
            )

        try:
            return await db.retrying(insert)
        except Exception as exc:
            # RAGNAROK accepted the workflow but we could not record it: it runs unpolled.
            log.error("job_record_failed", error=f"{type(exc).__name__}: {exc}")
            raise ServiceUnavailable("The job could not be recorded; try again") from None

    async def get_job(self, request: web.Request) -> web.Response:
        user_id = internal_user(request, self.secret)
        job_id = request.match_info["job_id"]
        job = await request.app[DEPS].store.get(job_id)
        if job is None:
            raise NotFound(f"No job {job_id}")
        if job.user_id != user_id:
            raise Forbidden("This job belongs to another user", job_id=job_id)
        return json_response(job_view(job), headers={HEADER_TRACE: job.trace_id})
