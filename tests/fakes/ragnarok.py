"""DEVELOPMENT STAND-IN for RAGNAROK — not the real service.

A fake of the API in docs/ragnarok-contract.md for tests and the local stack:

    python tests/fakes/ragnarok.py --port 8001 [--step-seconds 2] [--daily-limit 3]

- ``POST /api/v1/workflows`` validates its input (400), enforces a daily limit per
  ``business_name`` (429 with ``Retry-After``) and answers ``{"workflow_id", "status": "queued"}``.
- ``GET /api/v1/workflows/{id}``: ``queued`` for one step, ``processing`` for the next, then
  ``completed`` (or ``failed`` when submitted with ``"simulate_failure": true``).
- ``POST /_control`` ``{"mode": "ok"|"503"|"hang", "step_seconds", "poll_delay_seconds"}`` switches
  behaviour; ``GET /_stats`` reports submissions and polls, including the most polls of one
  workflow ever in flight at once and which replicas (``X-Montage-Replica``) polled it.

Importable too: :func:`create_app` returns the application and its :class:`FakeRagnarok` state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

STAND_IN = {"X-Development-Stand-In": "ragnarok"}
MODES = ("ok", "503", "hang")


@dataclass
class Workflow:
    workflow_id: str
    business_name: str
    created: float
    fail: bool
    trace_id: str


@dataclass
class FakeRagnarok:
    step_seconds: float = 2.0
    daily_limit: int = 3
    poll_delay_seconds: float = 0.0
    hang_seconds: float = 300.0
    mode: str = "ok"
    workflows: dict[str, Workflow] = field(default_factory=dict)
    per_business: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    submissions: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    polls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    max_in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    pollers: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    trace_ids: list[str] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def status_of(self, wf: Workflow) -> dict[str, Any]:
        steps = (time.monotonic() - wf.created) / self.step_seconds if self.step_seconds > 0 else 99
        body: dict[str, Any] = {
            "workflow_id": wf.workflow_id,
            "status": "queued",
            "video_url": None,
            "cost_usd": None,
            "quality_score": None,
            "error": None,
        }
        if steps >= 2:
            if wf.fail:
                body.update(status="failed", error="Render failed (simulated)")
            else:
                body.update(
                    status="completed",
                    video_url=f"s3://commercials/1080p/{wf.workflow_id}.mp4",
                    cost_usd=2.64,
                    quality_score=0.88,
                )
        elif steps >= 1:
            body["status"] = "processing"
        return body

    def stats(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "submissions": self.submissions,
            "workflows": len(self.workflows),
            "rejected": dict(self.rejected),
            "polls": dict(self.polls),
            "max_concurrent_polls": max(self.max_in_flight.values(), default=0),
            "max_in_flight": dict(self.max_in_flight),
            "pollers": {k: sorted(v) for k, v in self.pollers.items()},
            "trace_ids": self.trace_ids[-200:],
        }


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"detail": detail}, status=status, headers={**STAND_IN, **(headers or {})})


def _seconds_to_utc_midnight() -> int:
    now = dt.datetime.now(dt.UTC)
    tomorrow = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - now).total_seconds()))


def _validate(body: object) -> str | None:
    if not isinstance(body, dict):
        return "Body must be a JSON object"
    name = body.get("business_name")
    if not isinstance(name, str) or not name.strip():
        return "business_name is required"
    if len(name) > 200:
        return "business_name must be at most 200 characters"
    if body.get("industry") is not None and not isinstance(body["industry"], str):
        return "industry must be a string"
    duration = body.get("duration_seconds")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int | float) or not 5 <= duration <= 120
    ):
        return "duration_seconds must be a number between 5 and 120"
    if body.get("enrichment") is not None and not isinstance(body["enrichment"], dict):
        return "enrichment must be an object"
    return None


def create_app(state: FakeRagnarok | None = None) -> tuple[web.Application, FakeRagnarok]:
    fake = state or FakeRagnarok()
    app = web.Application()

    async def gate(request: web.Request) -> web.Response | None:
        """The 503/hang switch, applied to every API call."""
        if request.headers.get("X-Trace-ID"):
            fake.trace_ids.append(request.headers["X-Trace-ID"])
        if fake.mode == "503":
            return _error(503, "RAGNAROK temporarily unavailable", {"Retry-After": "1"})
        if fake.mode == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fake.released.wait(), fake.hang_seconds)
            return _error(503, "RAGNAROK temporarily unavailable", {"Retry-After": "1"})
        return None

    async def submit(request: web.Request) -> web.Response:
        if (blocked := await gate(request)) is not None:
            return blocked
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            fake.rejected["400"] += 1
            return _error(400, "Body is not valid JSON")
        if problem := _validate(body):
            fake.rejected["400"] += 1
            return _error(400, problem)
        name = body["business_name"].strip()
        day = dt.datetime.now(dt.UTC).date().isoformat()
        if fake.per_business[(name, day)] >= fake.daily_limit:
            fake.rejected["429"] += 1
            return _error(
                429,
                f"Daily limit ({fake.daily_limit} workflows) exceeded",
                {"Retry-After": str(_seconds_to_utc_midnight())},
            )
        fake.per_business[(name, day)] += 1
        fake.submissions += 1
        wf = Workflow(
            workflow_id=str(uuid.uuid4()),
            business_name=name,
            created=time.monotonic(),
            fail=bool(body.get("simulate_failure")),
            trace_id=request.headers.get("X-Trace-ID", ""),
        )
        fake.workflows[wf.workflow_id] = wf
        return web.json_response({"workflow_id": wf.workflow_id, "status": "queued"}, status=201, headers=STAND_IN)

    async def get_workflow(request: web.Request) -> web.Response:
        workflow_id = request.match_info["workflow_id"]
        fake.polls[workflow_id] += 1
        fake.pollers[workflow_id].add(request.headers.get("X-Montage-Replica", "unknown"))
        fake.in_flight[workflow_id] += 1
        fake.max_in_flight[workflow_id] = max(fake.max_in_flight[workflow_id], fake.in_flight[workflow_id])
        try:
            if fake.poll_delay_seconds > 0:
                await asyncio.sleep(fake.poll_delay_seconds)
            if (blocked := await gate(request)) is not None:
                return blocked
            wf = fake.workflows.get(workflow_id)
            if wf is None:
                return _error(404, f"Workflow {workflow_id} not found")
            return web.json_response(fake.status_of(wf), headers=STAND_IN)
        finally:
            fake.in_flight[workflow_id] -= 1

    async def control(request: web.Request) -> web.Response:
        body = await request.json()
        mode = body.get("mode", fake.mode)
        if mode not in MODES:
            return _error(400, f"mode must be one of {MODES}")
        fake.mode = mode
        if mode == "hang":
            fake.released.clear()
        else:
            fake.released.set()
        for name in ("step_seconds", "poll_delay_seconds", "hang_seconds"):
            if name in body:
                setattr(fake, name, float(body[name]))
        if "daily_limit" in body:
            fake.daily_limit = int(body["daily_limit"])
        return web.json_response(fake.stats(), headers=STAND_IN)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(fake.stats(), headers=STAND_IN)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": "fake-ragnarok"}, headers=STAND_IN)

    async def release_hangs(app: web.Application) -> None:
        fake.released.set()

    app.on_shutdown.append(release_hangs)
    app.router.add_post("/api/v1/workflows", submit)
    app.router.add_get("/api/v1/workflows/{workflow_id}", get_workflow)
    app.router.add_post("/_control", control)
    app.router.add_get("/_stats", stats)
    app.router.add_get("/healthz", healthz)
    return app, fake


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DEVELOPMENT STAND-IN for RAGNAROK (see docs/ragnarok-contract.md)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--step-seconds", type=float, default=2.0, help="time in queued, then in processing")
    parser.add_argument("--daily-limit", type=int, default=3, help="workflows per business_name per UTC day")
    parser.add_argument("--poll-delay-seconds", type=float, default=0.0, help="added latency of status calls")
    args = parser.parse_args(argv)
    state = FakeRagnarok(
        step_seconds=args.step_seconds, daily_limit=args.daily_limit, poll_delay_seconds=args.poll_delay_seconds
    )
    app, _ = create_app(state)
    print(f"fake-ragnarok: DEVELOPMENT STAND-IN for RAGNAROK on http://{args.host}:{args.port}", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, shutdown_timeout=1.0)


if __name__ == "__main__":
    main()
