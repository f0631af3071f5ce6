"""RAGNAROK client adapter: the only code that speaks RAGNAROK's HTTP API (docs/ragnarok-contract.md).

Every failure leaves as a :class:`RagnarokAPIError`: RAGNAROK's error statuses keep their status,
``detail`` and ``Retry-After``; a connection failure is 503, a timeout 504 — never a 500.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import aiohttp
import msgspec
import structlog
from montage_contracts.pipeline import JobStatus

from montage_ragnarok.errors import (
    RagnarokAPIError,
    RagnarokTimeout,
    RagnarokUnreachable,
    from_status,
)
from montage_ragnarok.metrics import RAGNAROK_CALL_SECONDS, RAGNAROK_CALLS
from montage_ragnarok.settings import ProxySettings

log = structlog.get_logger()

HEADER_TRACE = "X-Trace-ID"
HEADER_REPLICA = "X-Montage-Replica"


class Submitted(msgspec.Struct, frozen=True, kw_only=True):
    """RAGNAROK's answer to ``POST /api/v1/workflows``."""

    workflow_id: str
    status: str = JobStatus.QUEUED


class Workflow(msgspec.Struct, frozen=True, kw_only=True):
    """RAGNAROK's answer to ``GET /api/v1/workflows/{id}``."""

    workflow_id: str
    status: str
    video_url: str | None = None
    cost_usd: Decimal | None = None
    quality_score: float | None = None
    error: str | None = None


class _ErrorBody(msgspec.Struct):
    detail: Any = None


_submitted = msgspec.json.Decoder(Submitted)
_workflow = msgspec.json.Decoder(Workflow)
_error = msgspec.json.Decoder(_ErrorBody)


def _detail(body: bytes, status: int) -> str:
    try:
        detail = _error.decode(body).detail
    except msgspec.DecodeError:
        detail = None
    if detail is None:
        text = body.decode(errors="replace").strip()
        return text[:500] or f"RAGNAROK answered HTTP {status}"
    return detail if isinstance(detail, str) else msgspec.json.encode(detail).decode()


class RagnarokClient:
    """Calls RAGNAROK over one shared ``aiohttp.ClientSession``."""

    def __init__(self, session: aiohttp.ClientSession, settings: ProxySettings, replica_id: str) -> None:
        self.session = session
        self.base = settings.ragnarok_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(
            total=settings.ragnarok_timeout_seconds, connect=settings.ragnarok_connect_timeout_seconds
        )
        self.headers = {HEADER_REPLICA: replica_id}
        if settings.ragnarok_api_key:
            self.headers["Authorization"] = f"Bearer {settings.ragnarok_api_key}"

    async def submit(self, payload: dict[str, Any], *, trace_id: str) -> Submitted:
        body = await self._call("submit", "POST", "/api/v1/workflows", trace_id, payload)
        try:
            return _submitted.decode(body)
        except msgspec.DecodeError as exc:
            RAGNAROK_CALLS.labels("submit", "invalid_body").inc()
            raise RagnarokAPIError(f"RAGNAROK's submit answer was not understood: {exc}") from None

    async def workflow(self, workflow_id: str, *, trace_id: str) -> Workflow:
        body = await self._call("status", "GET", f"/api/v1/workflows/{workflow_id}", trace_id, None)
        try:
            return _workflow.decode(body)
        except msgspec.DecodeError as exc:
            RAGNAROK_CALLS.labels("status", "invalid_body").inc()
            raise RagnarokAPIError(f"RAGNAROK's workflow answer was not understood: {exc}") from None

    async def _call(self, endpoint: str, method: str, path: str, trace_id: str, payload: object) -> bytes:
        headers = {**self.headers, HEADER_TRACE: trace_id}
        start = time.perf_counter()
        outcome = "error"
        try:
            async with self.session.request(
                method, self.base + path, json=payload, headers=headers, timeout=self.timeout
            ) as resp:
                body = await resp.read()
                outcome = str(resp.status)
                if resp.status >= 400:
                    err = from_status(resp.status, _detail(body, resp.status), resp.headers.get("Retry-After"))
                    log.info("ragnarok_error", endpoint=endpoint, status=resp.status, detail=err.detail)
                    raise err
                return body
        except TimeoutError:
            outcome = "timeout"
            log.warning("ragnarok_timeout", endpoint=endpoint)
            raise RagnarokTimeout() from None
        except aiohttp.ClientError as exc:
            outcome = "unreachable"
            log.warning("ragnarok_unreachable", endpoint=endpoint, error=f"{type(exc).__name__}: {exc}")
            raise RagnarokUnreachable() from None
        finally:
            RAGNAROK_CALLS.labels(endpoint, outcome).inc()
            RAGNAROK_CALL_SECONDS.labels(endpoint).observe(time.perf_counter() - start)
