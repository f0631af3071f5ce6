"""The provider clients of one worker process, and provider failures translated at the boundary.

:class:`Providers` holds one ``openai.AsyncOpenAI`` client per (base URL, key, timeout) — the
text, transcription and image seams each get one, created on first use — and one
``aiohttp.ClientSession`` for ragnarok-proxy and clip downloads. The worker makes one
:class:`Providers` and closes it at shutdown, so connections are pooled across tasks, never made
per call. The SDK's own retries are off (``max_retries=0``): the stream runtime retries a failed
stage on its schedule (2 s, 4 s, 8 s), which keeps every retry visible and bounded in one place.

Failures (:func:`translate`):

- 429, 5xx, a timeout, a connection error or an unparseable answer → :class:`ProviderUnavailable`
  (``GENERATION_ERROR``, retryable: the runtime retries; after the last retry the job fails with
  ``GENERATION_ERROR``, ``retryable: true``, unless the stage has a fallback);
- a content-policy refusal → :class:`ContentRefused` (``VALIDATION_ERROR``: neither the runtime nor
  the user should retry it, since the same prompt is refused again; a stage with a fallback takes it);
- another 4xx → :class:`~montage_contracts.errors.GenerationError` (not retried by the runtime).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import aiohttp
import openai
from montage_contracts.errors import ErrorCode, GenerationError, RetryableError

from montage_stages.runtime.provider_limits import ProviderLimits

if TYPE_CHECKING:
    import runwayml


class ProviderUnavailable(GenerationError, RetryableError):
    """A generation provider failed in a way that may pass: retried, then ``GENERATION_ERROR``."""

    default_message = "Generation provider unavailable"


class ContentRefused(GenerationError):
    """A provider refused the request under its content policy: resubmitting the same prompt is
    refused again, so the job's failure is ``VALIDATION_ERROR`` (``retryable: false``), not the
    retryable ``GENERATION_ERROR``. Still a :class:`GenerationError`, so stages that degrade on a
    provider failure (text-only stills, no lyrics, the fallback plan) degrade on it too."""

    code, default_message = ErrorCode.VALIDATION_ERROR, "Refused by the provider's content policy"


# The error codes OpenAI-compatible providers give a content-policy refusal (DALL-E and the
# transcriptions endpoint: content_policy_violation; GPT image models: moderation_blocked).
REFUSAL_CODES = frozenset({"content_policy_violation", "moderation_blocked"})


def client_request_id() -> str:
    """A fresh id for one provider request, sent as ``X-Client-Request-Id`` (OpenAI logs it with the
    request) and used as the request's billing id when the answer carries no ``x-request-id``."""
    return f"req_{uuid.uuid4().hex}"


def request_id_of(answer: object, sent: str) -> str:
    """The provider's id of the request that gave ``answer`` (its ``x-request-id``), else ``sent``."""
    rid = getattr(answer, "_request_id", None)
    return rid if isinstance(rid, str) and rid else sent


class Providers:
    """The HTTP clients of one worker process (see the module docstring)."""

    def __init__(self, limits: ProviderLimits | None = None) -> None:
        self._openai: dict[tuple[str, str, float], openai.AsyncOpenAI] = {}
        self._runway: dict[tuple[str, str, float], runwayml.AsyncRunwayML] = {}
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        # the providers' shared slots, backoff and status (unlimited without Redis: tests, one process)
        self.limits = limits or ProviderLimits.unlimited()

    def runway(self, base_url: str, api_key: str, timeout: float) -> runwayml.AsyncRunwayML:
        """The Runway API client (its official SDK; created once, then reused; its retries off)."""
        import runwayml

        key = (base_url.rstrip("/"), api_key, timeout)
        client = self._runway.get(key)
        if client is None:
            limits = self.limits

            async def honour_backoff(request: object) -> None:
                # the shared 429 backoff, checked as the request goes out (not only when the call
                # was decided): a call held up meanwhile does not land inside another's Retry-After
                await limits.before_call("runway")

            http_client = runwayml.DefaultAsyncHttpxClient(timeout=timeout, event_hooks={"request": [honour_backoff]})
            client = runwayml.AsyncRunwayML(
                api_key=api_key, base_url=key[0], timeout=timeout, max_retries=0, http_client=http_client
            )
            # the SDK imports its resources on first use (a few hundred ms): done here, before a
            # provider slot is held, so a call decided under the shared limits is sent at once
            _ = (client.image_to_video, client.tasks)
            self._runway[key] = client
        return client

    def openai(self, base_url: str, api_key: str, timeout: float) -> openai.AsyncOpenAI:
        """The client of one OpenAI-compatible endpoint (created once, then reused)."""
        key = (base_url.rstrip("/"), api_key, timeout)
        client = self._openai.get(key)
        if client is None:
            client = openai.AsyncOpenAI(
                base_url=key[0],
                api_key=api_key or "not-needed",  # local servers (vLLM, Ollama) take any key
                timeout=timeout,
                max_retries=0,
            )
            self._openai[key] = client
        return client

    async def http(self) -> aiohttp.ClientSession:
        """The process's aiohttp session (ragnarok-proxy, clip downloads); per-call timeouts."""
        async with self._lock:
            if self._session is None or self._session.closed:
                self._session = aiohttp.ClientSession()
            return self._session

    async def aclose(self) -> None:
        for client in self._openai.values():
            await client.close()
        self._openai.clear()
        for runway in self._runway.values():
            await runway.close()
        self._runway.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


async def failed(limits: ProviderLimits, provider: str, what: str, exc: Exception) -> GenerationError:
    """An ``openai`` SDK failure translated (:func:`translate`), after telling the shared limits:
    a 429 backs every worker off ``provider`` for its ``Retry-After``; a failure other than a
    content refusal (the provider answered) is recorded as its last failure."""
    error = translate(what, exc)
    if isinstance(exc, openai.APIStatusError) and exc.status_code == 429:
        raw = exc.response.headers.get("retry-after")
        try:
            wait = float(raw) if raw is not None else None
        except ValueError:
            wait = None
        await limits.throttled(provider, wait)
    if not isinstance(error, ContentRefused):
        await limits.report(provider, False, error.message)
    return error


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return str(inner.get("message") or inner.get("detail") or "")[:200]
    return str(exc.message)[:200]


def translate(what: str, exc: Exception) -> GenerationError:
    """The Montage error of an ``openai`` SDK failure (``what`` names the provider)."""
    if isinstance(exc, openai.APITimeoutError):
        return ProviderUnavailable(f"{what} timed out")
    if isinstance(exc, openai.APIConnectionError):
        return ProviderUnavailable(f"{what} unreachable: {type(exc.__cause__ or exc).__name__}")
    if isinstance(exc, openai.APIStatusError):
        status, detail = exc.status_code, _detail(exc)
        if status == 429 or status >= 500:
            wait = exc.response.headers.get("retry-after")
            hint = f" (Retry-After {wait} s)" if wait else ""
            return ProviderUnavailable(f"{what} answered {status}{hint}: {detail}")
        if getattr(exc, "code", None) in REFUSAL_CODES:
            return ContentRefused(f"{what} refused the request (content policy): {detail}")
        return GenerationError(f"{what} answered {status}: {detail}")
    if isinstance(exc, openai.APIResponseValidationError | ValueError):
        return ProviderUnavailable(f"{what} answered with an unusable body: {type(exc).__name__}")
    return ProviderUnavailable(f"{what} failed: {type(exc).__name__}: {exc}"[:300])
