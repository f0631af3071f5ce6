"""One JSON POST to an AI provider, with its failures translated at the adapter boundary.

429 and 5xx answers, connection errors and timeouts are :class:`RetryableError` (the stream
runtime retries them); other 4xx answers are :class:`GenerationError`.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from montage_common.errors import GenerationError, RetryableError


def bearer(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def post_json(what: str, url: str, body: dict[str, Any], *, api_key: str, limit_seconds: float) -> Any:
    """POST ``body`` to ``url`` and return the decoded JSON answer; ``what`` names the provider."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limit_seconds)) as session,
            session.post(url, json=body, headers=bearer(api_key)) as resp,
        ):
            if resp.status == 429 or resp.status >= 500:
                raise RetryableError(f"{what} answered {resp.status}")
            if resp.status >= 400:
                raise GenerationError(f"{what} answered {resp.status}")
            return await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RetryableError(f"{what} unreachable: {type(exc).__name__}") from None
