"""Errors of the proxy. RAGNAROK's own errors keep their status, ``detail`` and ``Retry-After``.

The body is Montage's error body plus the ``detail`` field RAGNAROK (and the Nexus spec) uses:
``{"detail": ..., "error": ..., "code": ..., "retryable": ..., "job_id": ..., "trace_id": ...}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from montage_contracts.errors import SERVICE_UNAVAILABLE_RETRY_AFTER, ErrorCode, MontageError


class RagnarokAPIError(MontageError):
    """RAGNAROK refused a call or could not be reached."""

    status: ClassVar[int] = 502
    code: ClassVar[ErrorCode] = ErrorCode.UPSTREAM_ERROR
    retryable: ClassVar[bool] = True
    default_message: ClassVar[str] = "RAGNAROK returned an unexpected response"

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: str | None = None,
        upstream_status: int | None = None,
        job_id: str | None = None,
        trace_id: str | None = None,
    ) -> None:
        self.detail = detail or self.default_message
        self.retry_after = retry_after
        self.upstream_status = upstream_status
        headers = {"Retry-After": retry_after} if retry_after else {}
        extra: dict[str, Any] = {"trace_id": trace_id} if trace_id else {}
        if retry_after:
            extra["retry_after"] = int(retry_after) if retry_after.isdigit() else retry_after
        super().__init__(self.detail, job_id=job_id, extra=extra, headers=headers)

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, **super().body()}


class RagnarokBadRequest(RagnarokAPIError):
    """RAGNAROK rejected the input (400)."""

    status, code, retryable, default_message = 400, ErrorCode.VALIDATION_ERROR, False, "RAGNAROK rejected the request"


class RagnarokRateLimited(RagnarokAPIError):
    """RAGNAROK's rate or daily limit was hit (429)."""

    status, code, retryable, default_message = 429, ErrorCode.RATE_LIMIT_EXCEEDED, True, "RAGNAROK rate limit exceeded"


class RagnarokUnavailable(RagnarokAPIError):
    """RAGNAROK said it is unavailable (503)."""

    status, code, retryable, default_message = 503, ErrorCode.SERVICE_UNAVAILABLE, True, "RAGNAROK is unavailable"
    retry_after_seconds = SERVICE_UNAVAILABLE_RETRY_AFTER  # when RAGNAROK sent no Retry-After of its own


class RagnarokUnreachable(RagnarokUnavailable):
    """RAGNAROK could not be connected to (answered as 503)."""

    default_message = "RAGNAROK could not be reached"


class RagnarokTimeout(RagnarokAPIError):
    """RAGNAROK did not answer within the configured timeout (504)."""

    status, code, retryable, default_message = 504, ErrorCode.TIMEOUT, True, "RAGNAROK did not answer in time"


class WorkflowNotFound(RagnarokAPIError):
    """RAGNAROK does not know the workflow (its 404; a client sees 502)."""

    retryable = False
    default_message = "RAGNAROK does not know this workflow"


def from_status(status: int, detail: str | None, retry_after: str | None) -> RagnarokAPIError:
    """The error for an HTTP error status RAGNAROK answered with."""
    cls: type[RagnarokAPIError]
    if status in (400, 422):
        cls = RagnarokBadRequest
    elif status == 429:
        cls = RagnarokRateLimited
    elif status == 503:
        cls = RagnarokUnavailable
    elif status == 504:
        cls = RagnarokTimeout
    elif status == 404:
        cls = WorkflowNotFound
    else:
        cls = RagnarokAPIError
    return cls(detail, retry_after=retry_after, upstream_status=status)
