"""Previews and the assets of a job (issue #25).

As each reference still and each clip is stored, its worker copies it to its preview key
(``layout.preview``: under ``video-outputs/<job>/previews/``, kept as long as the video, because
the stills and clips themselves are deleted when the job completes) and reports it
(``StagePreview``). The pipeline lists it in ``job_assets`` (migration 0750) and sends a
``preview`` event with a signed URL (the same signed URLs as the video's). The composer's poster
(a frame of the final video, ``layout.poster``) is listed when the job completes.

``GET /api/v1/jobs/{job_id}/assets`` (owner only) answers the listed stills and clips, then the
final video and its poster, each with a fresh signed URL; nothing once the job's files expired
or were deleted. A cancel drops the previews with the other intermediates (spec: a cancel deletes
the reference images and clips at once).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
from aiohttp import web
from montage_common.web import internal_user
from montage_contracts import api
from montage_contracts.api import timestamp
from montage_contracts.pipeline import JobStatus

from montage_orchestrator import store
from montage_orchestrator.deps import DEPS, Deps
from montage_orchestrator.http import job_uuid, owned, respond


async def record(  # noqa: PLR0917
    db: asyncpg.Pool | asyncpg.Connection, job_id: uuid.UUID, kind: str, index: int, key: str, subject: str | None
) -> None:
    """List one asset (idempotent: the same asset reported again keeps its first time)."""
    await db.execute(
        "INSERT INTO job_assets (job_id, kind, subject, idx, storage_key) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (job_id, kind, subject, idx) DO UPDATE SET storage_key = EXCLUDED.storage_key",
        job_id,
        kind,
        subject or "",
        index,
        key,
    )


async def drop_previews(conn: asyncpg.Connection, job_id: uuid.UUID) -> None:
    """Unlist the stills and clips (a cancel deletes their files)."""
    await conn.execute("DELETE FROM job_assets WHERE job_id = $1 AND kind IN ('still', 'clip')", job_id)


async def poster_key(db: asyncpg.Pool | asyncpg.Connection, job_id: uuid.UUID) -> str | None:
    key: str | None = await db.fetchval(
        "SELECT storage_key FROM job_assets WHERE job_id = $1 AND kind = 'poster'", job_id
    )
    return key


async def poster_url(deps: Deps, job_id: str) -> str | None:
    """The completed job's poster as a signed URL (``None`` when it has none)."""
    key = await poster_key(deps.pool, uuid.UUID(job_id))
    return None if key is None else await deps.storage.signed_url(key, deps.settings.download_url_seconds)


_KIND_ORDER = {"still": 0, "clip": 1, "poster": 3}


async def list_assets(request: web.Request) -> web.Response:
    """``GET /api/v1/jobs/{job_id}/assets`` (owner only)."""
    deps: Deps = request.app[DEPS]
    user = internal_user(request, deps.settings.internal_secret)
    job_id = job_uuid(request)
    row = await store.get_job(deps.pool, job_id)
    owned(row, user)
    assert row is not None
    expires = deps.settings.download_url_seconds
    out: list[api.Asset] = []
    if row["files_cleaned_at"] is None:
        rows = await deps.pool.fetch(
            "SELECT kind, subject, idx, storage_key, created_at FROM job_assets WHERE job_id = $1", job_id
        )
        listed = sorted(rows, key=lambda r: (_KIND_ORDER[r["kind"]], r["subject"] != "scene", r["idx"]))
        video = row["video_key"] if row["status"] == JobStatus.COMPLETED and row["video_key"] is not None else None
        for r in listed:
            if r["kind"] == "poster":
                if video is None:
                    continue
                out.append(await _asset(deps, "video", 0, None, video, row["completed_at"], expires))
            out.append(
                await _asset(
                    deps, r["kind"], r["idx"], r["subject"] or None, r["storage_key"], r["created_at"], expires
                )
            )
        if video is not None and not any(a.kind == "video" for a in out):  # completed before posters existed
            out.append(await _asset(deps, "video", 0, None, video, row["completed_at"], expires))
    return respond(api.JobAssets(job_id=str(job_id), assets=out, expires_in=expires))


async def _asset(  # noqa: PLR0917
    deps: Deps, kind: str, index: int, subject: str | None, key: str, at: datetime | None, expires: int
) -> api.Asset:
    url = await deps.storage.signed_url(key, expires)
    created = timestamp(at or datetime.now(UTC))
    return api.Asset(kind=kind, index=index, subject=subject, url=url, created_at=created)  # type: ignore[arg-type]
