"""An HTTP client of the public API: the gateway is the only thing it talks to."""

from __future__ import annotations

import asyncio
import json
import mimetypes
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
from montage_contracts.routes import route

from montage_cli.errors import ApiError, StackNotRunning, Unavailable, UsageError

AUDIO_TYPES = {".mp3": "audio/mpeg", ".wav": "audio/wav", ".flac": "audio/flac"}


def audio_content_type(path: Path) -> str:
    return AUDIO_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _retry_after(resp: aiohttp.ClientResponse, body: dict[str, Any]) -> float | None:
    raw = resp.headers.get("Retry-After") or body.get("retry_after")
    try:
        return float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


async def _error(resp: aiohttp.ClientResponse) -> ApiError:
    text = await resp.text()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"error": text.strip()[:300] or resp.reason or "request failed", "code": f"HTTP_{resp.status}"}
    return ApiError(resp.status, body, _retry_after(resp, body))


class MontageClient:
    """The public API of one Montage deployment, as one caller (bearer token)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str = "") -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.token = token

    def url(self, path: str) -> str:
        return self.base_url + path

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        out = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**out, **(extra or {})}

    @asynccontextmanager
    async def request(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request; connection failures become :class:`StackNotRunning`, 4xx/5xx :class:`ApiError`."""
        headers = self.headers(kwargs.pop("headers", None))
        try:
            async with self.session.request(method, self.url(path), headers=headers, **kwargs) as resp:
                if resp.status >= 400:
                    raise await _error(resp)
                yield resp
        except aiohttp.ClientConnectorError as exc:
            raise StackNotRunning(self.base_url, str(exc.os_error or exc)) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise StackNotRunning(self.base_url, str(exc) or "server disconnected") from None
        except TimeoutError:  # asyncio.TimeoutError and aiohttp's timeouts
            raise Unavailable(f"{method} {path}: Montage at {self.base_url} did not answer in time") from None

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self.request(method, path, **kwargs) as resp:
            return await resp.json(content_type=None)

    # --- the public API ------------------------------------------------------------------
    async def health(self) -> dict[str, Any]:
        """``GET /api/v1/health``; a 503 body (unhealthy) is returned, not raised."""
        try:
            async with self.session.get(self.url(route("getHealth").path)) as resp:
                body = await resp.json(content_type=None)
                return body if isinstance(body, dict) else {"status": "unknown"}
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            raise StackNotRunning(self.base_url, str(exc)) from None
        except TimeoutError:
            raise Unavailable(f"Montage at {self.base_url} did not answer its health check in time") from None

    async def upload(
        self, song: Path, prompt: str, *, idempotency_key: str | None = None, webhook_url: str | None = None
    ) -> dict[str, Any]:
        """``POST /api/v1/upload-audio``; with ``idempotency_key`` a repeat of this upload (e.g. after
        a network error) answers the first response instead of creating a second job; with
        ``webhook_url`` the job's final event is POSTed there."""
        if not await asyncio.to_thread(song.is_file):
            raise UsageError(f"no such file: {song}")
        form = aiohttp.FormData()
        form.add_field("user_prompt", prompt)
        if webhook_url:
            form.add_field("webhook_url", webhook_url)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        with song.open("rb") as fh:
            form.add_field("audio_file", fh, filename=song.name, content_type=audio_content_type(song))
            result: dict[str, Any] = await self.call("POST", route("uploadAudio").path, data=form, headers=headers)
        return result

    async def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("GET", route("getJob").url(job_id=job_id))
        return result

    async def jobs(self, status: str | None = None, limit: int = 10, offset: int = 0) -> dict[str, Any]:
        params: dict[str, str] = {"limit": str(limit), "offset": str(offset)}
        if status:
            params["status"] = status
        result: dict[str, Any] = await self.call("GET", route("listJobs").path, params=params)
        return result

    async def cancel(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("POST", route("cancelJob").url(job_id=job_id))
        return result

    async def delete(self, job_id: str) -> None:
        """``DELETE /api/v1/jobs/{job_id}``: the job, its files and records (204, also when deleted before)."""
        await self.call("DELETE", route("deleteJob").url(job_id=job_id))

    async def retry(self, job_id: str) -> dict[str, Any]:
        """``POST …/retry``: a new job continuing a failed or cancelled one (its ``job_id`` is new)."""
        result: dict[str, Any] = await self.call("POST", route("retryJob").url(job_id=job_id))
        return result

    async def usage(self) -> dict[str, Any]:
        """``GET /api/v1/usage``: jobs in the rate-limit window, when a slot frees, active jobs, spend."""
        result: dict[str, Any] = await self.call("GET", route("getUsage").path)
        return result

    async def assets(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("GET", route("getJobAssets").url(job_id=job_id))
        return result

    async def download_info(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("GET", route("getDownload").url(job_id=job_id))
        return result

    async def stream_ticket(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("POST", route("createStreamTicket").url(job_id=job_id))
        return result

    async def dev_token(self, user_id: str) -> str:
        body = await self.call("POST", route("createDevToken").path, json={"user_id": user_id})
        token = body.get("access_token") or body.get("token")  # the gateway answers Supabase-style
        if not token:
            raise ApiError(
                502,
                {
                    "error": f"the development token endpoint answered without a token: {sorted(body)}",
                    "code": "BAD_RESPONSE",
                },
            )
        return str(token)

    async def download(self, job_id: str, out_dir: Path, *, chunk: int = 1 << 16) -> Path:
        """Fetch the finished video through its signed URL into ``out_dir``; returns the file."""
        info = await self.download_info(job_id)
        url = urljoin(self.base_url + "/", str(info["download_url"]))
        name = Path(str(info.get("filename") or f"music_video_{job_id}.mp4")).name
        await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
        dest = out_dir / name
        part = dest.with_suffix(dest.suffix + ".part")
        try:
            async with self.session.get(url) as resp:  # signed: no Authorization needed
                if resp.status >= 400:
                    raise await _error(resp)
                with part.open("wb") as fh:
                    async for block in resp.content.iter_chunked(chunk):
                        fh.write(block)
        except aiohttp.ClientConnectorError as exc:
            raise StackNotRunning(url, str(exc)) from None
        part.replace(dest)
        return dest
