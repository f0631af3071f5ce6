"""Errors the gateway raises itself; bodies and status codes come from ``montage_contracts.errors``."""

from __future__ import annotations

from montage_contracts.errors import ErrorCode, MontageError, RateLimitError, ServiceUnavailable, UpstreamTimeout


class TooManyConnections(ServiceUnavailable):
    """The job or the user already has the maximum number of open SSE connections."""

    code, default_message = ErrorCode.TOO_MANY_CONNECTIONS, "Too many connections"


class RequestsThrottled(RateLimitError):
    """The general per-user or per-IP request guard tripped."""

    default_message = "Too many requests"


class UpstreamUnavailable(ServiceUnavailable):
    """An internal service could not be reached."""

    default_message = "Service temporarily unavailable"


class UpstreamTimedOut(UpstreamTimeout):
    """An internal service did not answer in time."""

    default_message = "Upstream service timed out"


class IdempotencyKeyReused(MontageError):
    """The ``Idempotency-Key`` was used before with a different song or prompt (the draft's 422)."""

    status, code, default_message = 422, ErrorCode.IDEMPOTENCY_KEY_REUSED, "Idempotency-Key already used"


class IdempotencyKeyInUse(MontageError):
    """A request with this ``Idempotency-Key`` is still being processed (the draft's 409)."""

    status, code, retryable = 409, ErrorCode.IDEMPOTENCY_KEY_IN_USE, True
    default_message = "A request with this Idempotency-Key is still being processed"
    retry_after_seconds = 1
