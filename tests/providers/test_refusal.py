"""A content-policy refusal is classified by what a retry can change: nothing. Not retried by the
runtime, and the job fails ``VALIDATION_ERROR`` (``retryable: false``), while a 429 or a 5xx stays
a retryable ``GENERATION_ERROR``. The error shapes are the OpenAI API's (the SDK's exceptions built
as the SDK builds them from an answer's ``error`` object)."""

from __future__ import annotations

import httpx
import openai
import pytest
from montage_contracts.errors import ErrorCode, GenerationError, RetryableError, job_retryable
from montage_stages.runtime.provider_http import ContentRefused, ProviderUnavailable, translate


def _status_error(status: int, code: str | None, message: str = "x") -> openai.APIStatusError:
    request = httpx.Request("POST", "https://api.openai.com/v1/images/generations")
    response = httpx.Response(status, request=request, json={"error": {"message": message, "code": code}})
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    cls = {400: openai.BadRequestError, 429: openai.RateLimitError}.get(status, openai.APIStatusError)
    return cls(message, response=response, body=error)


@pytest.mark.parametrize("code", ["content_policy_violation", "moderation_blocked"])
def test_a_refusal_is_not_retryable(code: str) -> None:
    err = translate("image provider", _status_error(400, code, "Your request was rejected by the safety system"))
    assert type(err) is ContentRefused and isinstance(err, GenerationError)
    assert not isinstance(err, RetryableError) and not err.retryable
    assert err.code == ErrorCode.VALIDATION_ERROR and not job_retryable(err.code)
    assert "content policy" in err.message and "safety system" in err.message


@pytest.mark.parametrize(("status", "code"), [(429, "rate_limit_exceeded"), (500, None), (503, None)])
def test_an_outage_stays_retryable(status: int, code: str | None) -> None:
    err = translate("image provider", _status_error(status, code))
    assert isinstance(err, ProviderUnavailable) and isinstance(err, RetryableError)
    assert err.code == ErrorCode.GENERATION_ERROR and job_retryable(err.code)


def test_another_client_error_is_a_generation_error_not_a_refusal() -> None:
    err = translate("image provider", _status_error(400, "invalid_value", "bad size"))
    assert type(err) is GenerationError and err.code == ErrorCode.GENERATION_ERROR
