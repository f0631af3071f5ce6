"""Errors of the spec, one class per condition, and their HTTP body.

Body: ``{"error": <message>, "code": <CODE>, "retryable": <bool>, "job_id": <id|null>}``
plus per-error extra fields (e.g. ``retry_after`` for rate limits).
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar


class ErrorCode(enum.StrEnum):
    """Every ``code`` an error body or a failed job can carry: the catalogue, in one place."""

    INTERNAL_ERROR = "INTERNAL_ERROR"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    GONE = "GONE"
    CONFLICT = "CONFLICT"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    TIMEOUT = "TIMEOUT"
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    MODULE_FAILURE = "MODULE_FAILURE"
    GENERATION_ERROR = "GENERATION_ERROR"
    CANCELLED = "CANCELLED"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    IDEMPOTENCY_KEY_IN_USE = "IDEMPOTENCY_KEY_IN_USE"


# The codes a failed job ends with (``jobs.error_code``); anything else a stage reports is
# recorded as MODULE_FAILURE.
JOB_FAILURE_CODES: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.MODULE_FAILURE,
        ErrorCode.GENERATION_ERROR,
        ErrorCode.BUDGET_EXCEEDED,
        ErrorCode.TIMEOUT,
        ErrorCode.CANCELLED,
        ErrorCode.VALIDATION_ERROR,
    }
)

# The failure codes of a job for which submitting the same song and prompt again may succeed.
RETRYABLE_JOB_CODES: frozenset[ErrorCode] = frozenset({ErrorCode.TIMEOUT, ErrorCode.GENERATION_ERROR})


def job_retryable(code: str | None) -> bool:
    """Whether a job that failed with ``code`` may succeed if submitted again: the ``retryable`` of
    its status, of its ``error`` event, and of an ``error`` event rebuilt from its state."""
    return code in RETRYABLE_JOB_CODES


# What a 503 tells a client to wait (``Retry-After``): a dependency that is down is usually back, or
# another replica takes the retry, within seconds; the demo page and generated clients honour it.
SERVICE_UNAVAILABLE_RETRY_AFTER = 2


class MontageError(Exception):
    """Base of every error Montage reports to a client or a pipeline."""

    status: ClassVar[int] = 500
    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR
    retryable: ClassVar[bool] = False
    default_message: ClassVar[str] = "Internal server error"
    # Seconds a client should wait before retrying, sent as ``Retry-After`` (None: not sent).
    retry_after_seconds: ClassVar[int | None] = None

    def __init__(
        self,
        message: str | None = None,
        *,
        job_id: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.job_id = job_id
        self.extra = extra or {}
        self.headers = dict(headers or {})
        if self.retry_after_seconds is not None:
            self.headers.setdefault("Retry-After", str(self.retry_after_seconds))
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {
            "error": self.message,
            "code": self.code,
            "retryable": self.retryable,
            "job_id": self.job_id,
            **self.extra,
        }


class ValidationError(MontageError):
    """Input validation failed."""

    status, code, default_message = 400, ErrorCode.VALIDATION_ERROR, "Invalid request"


class PayloadTooLarge(ValidationError):
    """The request body is over its limit."""

    status = 413


class RequestTimeout(ValidationError):
    """The client did not send its request (body) in time."""

    status, default_message = 408, "Request body not received in time"


class Unauthorized(MontageError):
    """Missing or invalid credentials."""

    status, code, default_message = 401, ErrorCode.UNAUTHORIZED, "Unauthorized"


class Forbidden(MontageError):
    """The caller may not touch this resource."""

    status, code, default_message = 403, ErrorCode.FORBIDDEN, "Forbidden"


class NotFound(MontageError):
    """No such resource."""

    status, code, default_message = 404, ErrorCode.NOT_FOUND, "Not found"


class MethodNotAllowed(MontageError):
    """The route exists but not with this method."""

    status, code, default_message = 405, ErrorCode.METHOD_NOT_ALLOWED, "Method not allowed"


class Gone(MontageError):
    """The resource existed but has expired or was deleted."""

    status, code, default_message = 410, ErrorCode.GONE, "Gone"


class Conflict(MontageError):
    """The action does not apply to the target's current state (an operator's retry of a dead letter)."""

    status, code, default_message = 409, ErrorCode.CONFLICT, "Conflict"


class BudgetExceededError(MontageError):
    """The job's cost would pass its mode's cap."""

    status, code, default_message = 402, ErrorCode.BUDGET_EXCEEDED, "Budget limit exceeded"


class RateLimitError(MontageError):
    """Too many requests."""

    status, code, retryable, default_message = 429, ErrorCode.RATE_LIMIT_EXCEEDED, True, "Rate limit exceeded"


class ServiceUnavailable(MontageError):
    """A dependency is down or a capacity limit is reached."""

    status, code, retryable, default_message = 503, ErrorCode.SERVICE_UNAVAILABLE, True, "Service unavailable"
    retry_after_seconds = SERVICE_UNAVAILABLE_RETRY_AFTER


class ServiceBusy(ServiceUnavailable):
    """Admission at the door: a new job would wait longer than ``ADMISSION_MAX_WAIT_SECONDS`` to start.

    Its code stays ``SERVICE_UNAVAILABLE`` (a 503 with ``Retry-After`` already means "come back then"
    to every client; a new value in a response enum breaks generated clients); ``estimated_wait``
    in the body tells the two apart. ``retry_after`` (also the header): when the work ahead will have
    drained enough for a new job to start in time.
    """

    default_message = "Too much work is waiting; retry later"

    def __init__(self, message: str | None = None, *, retry_after: int, estimated_wait: int) -> None:
        super().__init__(
            message,
            extra={"retry_after": retry_after, "estimated_wait": estimated_wait},
            headers={"Retry-After": str(retry_after)},
        )


class UpstreamTimeout(MontageError):
    """An internal or external service did not answer in time."""

    status, code, retryable, default_message = 504, ErrorCode.TIMEOUT, True, "Upstream timed out"


# --- pipeline errors (raised by stages, carried in results) -----------------------------
class PipelineError(MontageError):
    """A module failed and retrying will not help."""

    code, default_message = ErrorCode.MODULE_FAILURE, "Pipeline module failed"


class RetryableError(PipelineError):
    """A transient failure: the runtime retries it with backoff."""

    retryable = True


class GenerationError(PipelineError):
    """An AI generation provider failed."""

    code, default_message = ErrorCode.GENERATION_ERROR, "Generation failed"


class JobCancelled(PipelineError):
    """The user cancelled the job."""

    code, default_message = ErrorCode.CANCELLED, "Job cancelled by user"
