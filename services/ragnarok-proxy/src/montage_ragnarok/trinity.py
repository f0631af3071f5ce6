"""Trinity client adapter: enrichment is best effort and never stops a job.

:meth:`TrinityClient.enrich` always returns an enrichment object: Trinity's JSON with
``"available": true``, or ``{"available": false, "reason": ...}`` when Trinity is not configured,
unreachable, slow or answers with an error.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec
import structlog

from montage_ragnarok.metrics import TRINITY_CALLS
from montage_ragnarok.ragnarok import HEADER_REPLICA, HEADER_TRACE
from montage_ragnarok.settings import ProxySettings

log = structlog.get_logger()


def unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason}


class TrinityClient:
    def __init__(self, session: aiohttp.ClientSession, settings: ProxySettings, replica_id: str) -> None:
        self.session = session
        self.base = settings.trinity_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=settings.trinity_timeout_seconds)
        self.headers = {HEADER_REPLICA: replica_id}

    async def enrich(self, request: dict[str, Any], *, trace_id: str) -> dict[str, Any]:
        if not self.base:
            return unavailable("not_configured")
        outcome = "error"
        try:
            async with self.session.post(
                f"{self.base}/api/v1/enrich",
                json=request,
                headers={**self.headers, HEADER_TRACE: trace_id},
                timeout=self.timeout,
            ) as resp:
                outcome = str(resp.status)
                body = await resp.read()
                if resp.status != 200:
                    log.warning("trinity_error", status=resp.status)
                    return unavailable(f"trinity_http_{resp.status}")
            data = msgspec.json.decode(body)
            if not isinstance(data, dict):
                return unavailable("trinity_invalid_body")
            return {**data, "available": True}
        except TimeoutError:
            outcome = "timeout"
            log.warning("trinity_timeout")
            return unavailable("trinity_timeout")
        except aiohttp.ClientError as exc:
            outcome = "unreachable"
            log.warning("trinity_unreachable", error=f"{type(exc).__name__}: {exc}")
            return unavailable("trinity_unreachable")
        except msgspec.DecodeError:
            return unavailable("trinity_invalid_body")
        finally:
            TRINITY_CALLS.labels(outcome).inc()
