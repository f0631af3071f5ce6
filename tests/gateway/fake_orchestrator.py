"""A small stand-in for the orchestrator's HTTP side, following docs/contracts.md.

It checks the gateway's internal headers (``internal_user``), owns jobs per user (403/404 like
the real one), reads uploads as a stream, and can be told to fail, stall or report unhealthy.
Also runnable for the benchmark: ``python tests/gateway/fake_orchestrator.py --port 8081 --any-job``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from montage_common.web import HEADER_REQUEST_ID, error_response, internal_user, json_response
from montage_contracts.api import timestamp
from montage_contracts.errors import Forbidden, MontageError, NotFound

SECRET = "dev-internal-secret"


@dataclass
class Upload:
    user_id: str
    size: int
    sha256: str
    chunks: int


@dataclass
class FakeOrchestrator:
    secret: str = SECRET
    any_job: bool = False  # every job id exists and belongs to the caller (benchmark)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    uploads: list[Upload] = field(default_factory=list)
    upload_status: int = 201  # answer for uploads (non-201: the creation "fails")
    health: dict[str, Any] = field(
        default_factory=lambda: {
            "database": "connected",
            "redis": "connected",
            "queue": {"size": 0, "active_jobs": 0, "workers": 6, "stages": {}},
            "issues": [],
        }
    )
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    upload_progress: asyncio.Event = field(default_factory=asyncio.Event)
    progress_threshold: int = 1 << 20
    slow_seconds: float = 5.0

    def add_job(self, user_id: str, job_id: str | None = None, **state: Any) -> str:
        job_id = job_id or str(uuid.uuid4())
        now = datetime.now(UTC).isoformat()
        self.jobs[job_id] = {
            "job_id": job_id,
            "user_id": user_id,
            "status": "processing",
            "current_stage": "audio_parser",
            "progress": 0,
            "estimated_remaining": 300,
            "total_cost": 0.0,
            "video_url": None,
            "error_message": None,
            "created_at": now,
            "updated_at": now,
            **state,
        }
        return job_id

    @web.middleware
    async def errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except MontageError as err:
            return error_response(err)

    def _user(self, request: web.Request) -> str:
        self.seen_headers.append(dict(request.headers))
        return internal_user(request, self.secret)

    def _job(self, request: web.Request) -> dict[str, Any]:
        user = self._user(request)
        job_id = request.match_info["job_id"]
        if self.any_job:
            return {
                "job_id": job_id,
                "user_id": user,
                "status": "processing",
                "current_stage": "scene_planner",
                "progress": 20,
                "estimated_remaining": 300,
                "total_cost": 0.0,
                "video_url": None,
                "error_message": None,
            }
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound("Job not found", job_id=job_id)
        if job["user_id"] != user:
            raise Forbidden("Job belongs to another user", job_id=job_id)
        return job

    async def get_job(self, request: web.Request) -> web.Response:
        # Job ids that act out an upstream behaviour (the gateway forwards only its real routes).
        special = {"teapot": self.teapot, "slow": self.slow}.get(request.match_info["job_id"])
        if special is not None:
            return await special(request)
        job = self._job(request)
        return json_response({k: v for k, v in job.items() if k != "user_id"})

    async def list_jobs(self, request: web.Request) -> web.Response:
        user = self._user(request)
        mine = [j for j in self.jobs.values() if j["user_id"] == user]
        return json_response({"jobs": mine, "total": len(mine), "limit": 10, "offset": 0})

    async def upload(self, request: web.Request) -> web.Response:
        user = self._user(request)
        digest = hashlib.sha256()
        size = chunks = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
            chunks += 1
            if size >= self.progress_threshold:
                self.upload_progress.set()
        self.uploads.append(Upload(user, size, digest.hexdigest(), chunks))
        if self.upload_status != 201:
            return json_response(
                {"error": "Invalid upload", "code": "VALIDATION_ERROR", "retryable": False, "job_id": None},
                status=self.upload_status,
            )
        job_id = self.add_job(user, status="queued")
        return json_response(
            {
                "job_id": job_id,
                "status": "queued",
                "estimated_cost": 2.5,
                "created_at": self.jobs[job_id]["created_at"],
            },
            status=201,
        )

    async def internal_health(self, request: web.Request) -> web.Response:
        if request.headers.get("X-Montage-Internal") != self.secret:
            return json_response({"error": "Unauthorized"}, status=401)
        # The body of the contract (api.InternalHealth), its status from its issues.
        status = "unhealthy" if self.health.get("issues") else "healthy"
        body = {"status": status, "timestamp": timestamp(datetime.now(UTC)), **self.health}
        return json_response(body, status=503 if self.health.get("issues") else 200)

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.slow_seconds)
        return json_response({"ok": True})

    async def teapot(self, request: web.Request) -> web.Response:
        self._user(request)
        return web.Response(status=418, text="short and stout", headers={"X-Custom": "kept"})

    async def echo(self, request: web.Request) -> web.Response:
        user = self._user(request)
        return json_response(
            {
                "user": user,
                "request_id": request.headers.get(HEADER_REQUEST_ID),
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "query": request.query_string,
            }
        )

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.errors], client_max_size=64 * 1024**2)
        r = app.router
        r.add_post("/api/v1/upload-audio", self.upload)
        r.add_get("/api/v1/jobs", self.list_jobs)
        r.add_get("/api/v1/jobs/{job_id}", self.get_job)
        r.add_get("/internal/health", self.internal_health)
        r.add_post("/api/v1/jobs/{job_id}/cancel", self.echo)
        r.add_route("*", "/api/nexus/ragnarok/jobs/{job_id}", self.echo)
        return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--any-job", action="store_true")
    args = parser.parse_args()
    web.run_app(FakeOrchestrator(any_job=args.any_job).app(), host="127.0.0.1", port=args.port, access_log=None)


if __name__ == "__main__":
    main()
